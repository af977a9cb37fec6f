"""The error every command turns into one line on stderr and exit status 2."""

from __future__ import annotations


class UserError(ValueError):
    """A mistake in what the user asked for (a setting, a path, a device): one line, exit 2.

    A ValueError, so library callers that catch bad values keep working.
    """
