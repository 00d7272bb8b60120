"""One module per command. Each opens with its usage and imports nothing heavy at module level."""
