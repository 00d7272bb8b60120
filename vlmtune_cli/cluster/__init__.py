"""cluster wing."""
