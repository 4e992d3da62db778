"""aifb.monitor package."""
