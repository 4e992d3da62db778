"""aifb.collector package."""
