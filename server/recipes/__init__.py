"""aifb.server.recipes package."""
