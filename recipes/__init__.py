"""aifb.recipes package."""
