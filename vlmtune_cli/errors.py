"""Our own error types. Core code raises these; only `cli.py` turns them into messages and exit codes.

Exit codes follow the usual convention of command-line tools: 2 for a mistake in how the tool was called
(a bad recipe, a bad flag, a missing file the user named), 1 for a failure while doing the work.
"""

from __future__ import annotations


class VlmtuneError(Exception):
    """A failure while doing the work (exit code 1). `hint` says what the user can do about it."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(VlmtuneError):
    """The user asked for something that cannot be done as asked (exit code 2)."""

    exit_code = 2


class RecipeError(UsageError):
    """A recipe file, a `--set` override or a `VLMTUNE_*` variable is malformed or invalid."""
