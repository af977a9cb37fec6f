"""The error every command turns into one line on stderr and exit status 2."""

from __future__ import annotations


class UserError(ValueError):
    """A mistake in what the user asked for (a setting, a path, a device): one line, exit 2.

    A ValueError, so library callers that catch bad values keep working.
    """


class StorageFaultError(UserError):
    """The storage itself refuses writes (full disk or quota, read-only, no permission).

    Permanent and the same for every shard, so the run stops at once: one line, exit 2.
    """
