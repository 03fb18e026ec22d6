"""The guangdong registry adapter."""
