"""Errors a user of the adaptation commands can fix (a data folder, a column, a setting that does not fit the
expert); the CLI prints them as one `error: ...` line."""
from __future__ import annotations

from multimeditron.errors import UserError


class AdaptationError(UserError, ValueError):
    """A setting or expert that the requested adaptation cannot use; the message names it."""


class AdaptDataError(AdaptationError):
    """The adaptation data cannot be read; the message names the path or column."""
