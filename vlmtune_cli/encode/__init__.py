"""encode wing."""
