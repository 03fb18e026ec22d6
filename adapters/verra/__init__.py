"""The verra registry adapter."""
