"""aifb.server.schedulers package."""
