"""aifb.logger package."""
