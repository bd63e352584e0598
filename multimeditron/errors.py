"""The base of every error a user can fix (a config key, a path, a dataset, a task name): the CLI prints it as one
`error: ...` line and exits non-zero, without a traceback (`--debug` shows it)."""
from __future__ import annotations


class UserError(Exception):
    """A problem with what the user asked for or gave, with a message that names the key, path or value at fault."""


class UsageError(UserError, ValueError):
    """A command-line option that is missing, contradicts another, or names something that does not exist (a task,
    an image file); the message starts with the option."""
