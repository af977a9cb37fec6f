"""The one family of user mistakes: every command turns a UserError into one line on stderr and
exit status 2. Anything else that escapes a command is a bug: the CLI shows its traceback (exit 1).
Subclasses may live near their use (e.g. `io.uris.InputError`), but derive from UserError.
"""

from __future__ import annotations


class UserError(ValueError):
    """A mistake in what the user asked for (a setting, a path, a device): one line, exit 2.

    A ValueError, so library callers that catch bad values keep working.
    """


class StorageFaultError(UserError):
    """The storage itself refuses writes (full disk or quota, read-only, no permission).

    Permanent and the same for every shard, so the run stops at once: one line, exit 2.
    """


class NotFoundError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist: one line, exit 2.

    Also a FileNotFoundError, so callers that treat a missing path as such keep working.
    """
