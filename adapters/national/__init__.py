"""The national registry adapter."""
