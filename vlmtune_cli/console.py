"""The two consoles every command prints to: results on stdout, messages and progress on stderr."""

from rich.console import Console

console = Console(soft_wrap=True)
# Messages are not wrapped at the terminal width: a path or key cut in two cannot be copied.
err_console = Console(stderr=True, soft_wrap=True)
