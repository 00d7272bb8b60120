"""config wing."""
