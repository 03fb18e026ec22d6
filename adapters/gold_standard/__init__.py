"""The gold_standard registry adapter."""
