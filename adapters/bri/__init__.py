"""The bri registry adapter."""
