"""The hkmo registry adapter."""
