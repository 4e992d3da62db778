"""aifb.client package."""
