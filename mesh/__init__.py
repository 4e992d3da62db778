"""aifb.mesh package."""
