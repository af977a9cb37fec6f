"""Single files named by URI (an embedding set, a support bank, a training state), written
atomically, retrying transient storage errors (:mod:`labeler.io.retry`); and whole folders of
files (a model checkpoint) copied between a local folder and any URI, file by file.

A file is written through the :class:`~labeler.io.folders.Folder` of its parent, so a local file
appears whole (written under a temporary name, then renamed) and an object store gets one PUT.
Reading is :func:`labeler.io.reading.read_file`, what a URI names
:func:`labeler.io.listing.path_kind`.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import shutil
from pathlib import Path
from typing import Any

from labeler.io.folders import Folder
from labeler.io.retry import DEFAULT_RETRY, RetryPolicy
from labeler.io.uris import parent_uri, redact_uri

__all__ = ["folder_version", "read_folder", "read_in", "split_uri", "write_file", "write_folder",
           "write_in"]

#: Bytes copied at a time: folders of model weights are streamed, never held whole.
_BLOCK = 1 << 22


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
    write_in(Folder(folder, storage_options), name, data, retry)


def write_in(folder: Folder, relative: str, data: bytes, retry: RetryPolicy = DEFAULT_RETRY) -> None:
    """Write ``data`` to ``relative`` in ``folder`` atomically, retrying transient errors."""
    retry.call(lambda: folder.write_bytes(relative, data), what=redact_uri(folder.uri_of(relative)))


def read_in(folder: Folder, relative: str, retry: RetryPolicy = DEFAULT_RETRY) -> bytes | None:
    """The content of ``relative`` in ``folder`` (None: no such file), retrying transient errors."""
    what = redact_uri(folder.uri_of(relative))
    if not retry.call(lambda: folder.exists(relative), what=what):
        return None
    return retry.call(lambda: folder.read_bytes(relative), what=what)


def write_folder(local: str | Path, folder: Folder, under: str = "",
                 retry: RetryPolicy = DEFAULT_RETRY) -> list[str]:
    """Copy every file under the local folder ``local`` into ``folder`` (any filesystem), below
    its path ``under``.

    Each file is streamed and published whole (:meth:`Folder.open_atomic_writer`: a reader sees
    the old file or the new one), retrying transient errors; files already there and not in
    ``local`` are left. Returns the paths written, relative to ``folder``, in the order written
    (sorted).
    """
    local = Path(local)
    written = []
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        relative = posixpath.join(under, path.relative_to(local).as_posix())

        def attempt(path: Path = path, relative: str = relative) -> None:
            with path.open("rb") as source, folder.open_atomic_writer(relative) as target:
                shutil.copyfileobj(source, target, _BLOCK)

        retry.call(attempt, what=redact_uri(folder.uri_of(relative)))
        written.append(relative)
    return written


def read_folder(uri: str, local: str | Path, storage_options: dict[str, Any] | None = None,
                retry: RetryPolicy = DEFAULT_RETRY) -> list[str]:
    """Copy every file under the folder ``uri`` (any fsspec URI) into the local folder ``local``,
    streamed, retrying transient errors (a file whose read fails is read again from its start).

    Returns the paths read, relative to ``uri``.
    """
    local = Path(local)
    folder = Folder(uri, storage_options)
    shown = redact_uri(folder.uri)
    files = retry.call(lambda: list(folder.files_under("")), what=shown)
    for relative in files:
        target = local / relative
        target.parent.mkdir(parents=True, exist_ok=True)

        def attempt(relative: str = relative, target: Path = target) -> None:
            with folder.open(relative) as source, target.open("wb") as sink:
                shutil.copyfileobj(source, sink, _BLOCK)

        retry.call(attempt, what=redact_uri(folder.uri_of(relative)))
    return files


#: What a listing says of a file's version: its size and the store's stamps (an object store's
#: ETag or generation, a modification time).
_VERSION_KEYS = ("size", "ETag", "etag", "generation", "mtime", "LastModified", "last_modified")


def folder_version(uri: str, storage_options: dict[str, Any] | None = None,
                   retry: RetryPolicy = DEFAULT_RETRY) -> str:
    """16 hex digits over one listing of the files under ``uri``: their paths, sizes and the
    store's version stamps. A file rewritten (even with the same size) changes it."""
    folder = Folder(uri, storage_options)

    def listing() -> dict:
        folder.fs.invalidate_cache(folder.root)
        return folder.fs.find(folder.root, detail=True)

    entries = retry.call(listing, what=redact_uri(folder.uri))
    digest = hashlib.sha256()
    for path in sorted(entries):
        info = entries[path]
        stamps = {key: str(info[key]) for key in _VERSION_KEYS if info.get(key) is not None}
        digest.update(json.dumps([posixpath.relpath(path, folder.root), stamps]).encode())
    return digest.hexdigest()[:16]
