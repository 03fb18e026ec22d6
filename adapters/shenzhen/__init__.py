"""The shenzhen registry adapter."""
