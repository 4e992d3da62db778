"""aifb.server package."""
