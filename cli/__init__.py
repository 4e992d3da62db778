"""aifb.cli package."""
