"""Single files named by URI (an embedding set, a support bank, a training state), written
atomically, retrying transient storage errors (:mod:`labeler.io.retry`).

A file is written through the :class:`~labeler.io.folders.Folder` of its parent, so a local file
appears whole (written under a temporary name, then renamed) and an object store gets one PUT.
Reading is :func:`labeler.io.reading.read_file`, what a URI names
:func:`labeler.io.listing.path_kind`.
"""

from __future__ import annotations

from typing import Any

from labeler.io.folders import Folder
from labeler.io.retry import DEFAULT_RETRY, RetryPolicy
from labeler.io.uris import parent_uri, redact_uri

__all__ = ["split_uri", "write_file"]


def split_uri(uri: str) -> tuple[str, str]:
    """``(folder URI, file name)`` of a file URI; a bare name lies in the current folder."""
    stripped = uri.rstrip("/")
    parent = parent_uri(stripped)
    if parent == stripped:
        return ".", stripped
    return parent, stripped[len(parent):].lstrip("/")


def write_file(uri: str, data: bytes, storage_options: dict[str, Any] | None = None,
               retry: RetryPolicy = DEFAULT_RETRY) -> None:
    """Write ``data`` to ``uri`` atomically (replacing a file there), creating parent folders."""
    folder, name = split_uri(uri)
    retry.call(lambda: Folder(folder, storage_options).write_bytes(name, data), what=redact_uri(uri))

