"""A folder on any fsspec filesystem (a run's output, an eval or preview destination), with
atomic writes.

Local folders write to a temporary name and rename; object stores write each object in one PUT,
which is atomic by nature (a reader sees the old object, or none, or the whole new one). The
folder is opened with :func:`labeler.io.uris.open_fs`, like the inputs: credentials embedded in
the URI go to the storage options and :attr:`Folder.uri` is the URI without them. Retries are the
caller's choice (:class:`labeler.io.retry.RetryPolicy` around the calls, as the run folder does).
"""

from __future__ import annotations

import datetime
import errno
import json
import logging
import os
import posixpath
import uuid
from collections.abc import Iterator

from labeler.io.uris import open_fs

logger = logging.getLogger(__name__)


class Folder:
    """``root`` on a filesystem; every path argument is relative to it.

    Args:
        uri: a local path or fsspec URI.
        storage_options: fsspec options (endpoint, credentials) for the protocol.
    """

    def __init__(self, uri: str, storage_options: dict | None = None) -> None:
        self.fs, root, clean = open_fs(uri, storage_options)
        self.uri = clean.rstrip("/") or clean
        self.root = root.rstrip("/") or root
        self.is_local = "file" in _protocols(self.fs)

    def path(self, relative: str) -> str:
        return posixpath.join(self.root, relative) if relative else self.root

    def uri_of(self, relative: str) -> str:
        """The URI of ``relative`` (for messages and for handing to other tools)."""
        return f"{self.uri}/{relative}" if relative else self.uri

    def exists(self, relative: str) -> bool:
        return self.fs.exists(self.path(relative))

    def read_bytes(self, relative: str) -> bytes:
        return self.fs.cat_file(self.path(relative))

    def read_json(self, relative: str):
        return json.loads(self.read_bytes(relative))

    def write_bytes(self, relative: str, data: bytes) -> None:
        """Write ``data`` atomically, creating parent folders."""
        target = self.path(relative)
        if self.is_local:
            self.fs.makedirs(posixpath.dirname(target), exist_ok=True)
            staging = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
            try:
                with self.fs.open(staging, "wb") as handle:
                    handle.write(data)
                self.fs.mv(staging, target)
            except BaseException:
                _discard(self.fs, staging)
                raise
        else:
            self.fs.pipe_file(target, data)

    def copy(self, source: str, target: str) -> None:
        """Copy one file of the folder to ``target`` without reading it into this process.

        Object stores copy server-side (one request, atomic by nature); local folders copy to a
        temporary name and rename, like :meth:`write_bytes`.
        """
        path = self.path(target)
        if not self.is_local:
            self.fs.copy(self.path(source), path)
            return
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        staging = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            self.fs.copy(self.path(source), staging)
            self.fs.mv(staging, path)
        except BaseException:
            _discard(self.fs, staging)
            raise

    def write_bytes_exclusive(self, relative: str, data: bytes) -> bool:
        """Publish ``data`` at ``relative`` whole, only when nothing is there (local folders).

        The data is written under a temporary name, then hard-linked to ``relative``: the link
        fails when ``relative`` exists, so of two writers one wins, and a write that fails (a full
        disk) leaves nothing. Returns False when ``relative`` already existed.
        """
        if not self.is_local:
            raise NotImplementedError("exclusive creation needs a local folder")
        target = self.path(relative)
        staging = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
        self.fs.makedirs(posixpath.dirname(target), exist_ok=True)
        try:
            with open(staging, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.link(staging, target)
        except FileExistsError:
            return False
        except OSError as error:
            if error.errno not in _NO_HARD_LINKS:
                raise
            return _create_exclusive(target, data)
        finally:
            _discard(self.fs, staging)
        return True

    def modified(self, relative: str) -> float | None:
        """When the store last wrote ``relative`` (epoch seconds, by the store's clock), or None
        when the filesystem keeps no such time."""
        try:
            stamp = self.fs.modified(self.path(relative))
        except (NotImplementedError, KeyError, AttributeError):
            return None
        if stamp.tzinfo is None:  # fsspec's convention: naive times are UTC
            stamp = stamp.replace(tzinfo=datetime.timezone.utc)
        return stamp.timestamp()

    def write_json(self, relative: str, value) -> None:
        self.write_bytes(relative, json.dumps(value, indent=1, sort_keys=True).encode())

    def open_atomic_writer(self, relative: str) -> AtomicWriter:
        """A binary file handle whose content appears at ``relative`` only on a clean close."""
        return AtomicWriter(self, relative)

    def list(self, relative: str) -> list[str]:
        """Names (not paths) directly under ``relative``; empty when it does not exist."""
        path = self.path(relative)
        self.fs.invalidate_cache(path)  # other processes write here: never trust a cached listing
        try:
            entries = self.fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(entry.rstrip("/")) for entry in entries)

    def remove(self, relative: str, recursive: bool = False) -> None:
        if self.exists(relative):
            self.fs.rm(self.path(relative), recursive=recursive)

    def remove_temporary(self, relative: str = "") -> int:
        """Remove staging files (``*.tmp-*``) a killed writer left under ``relative``.

        Only local folders have them (object stores write in one PUT). Call it only while no
        other process writes here. Returns how many were removed.
        """
        if not self.is_local:
            return 0
        try:
            stale = [path for path in self.files_under(relative)
                     if ".tmp-" in posixpath.basename(path)]
        except OSError as error:  # an unreadable folder: the caller's own error matters more
            logger.warning("could not look for temporary files in %s: %s", self.uri, error)
            return 0
        for path in stale:
            _discard(self.fs, self.path(path))
        return len(stale)

    def open(self, relative: str, mode: str = "rb"):
        return self.fs.open(self.path(relative), mode)

    def files_under(self, relative: str) -> Iterator[str]:
        """Relative paths of all files under ``relative``."""
        base = self.path(relative)
        if not self.fs.exists(base):
            return
        for path in self.fs.find(base):
            yield posixpath.relpath(path, self.root)


class AtomicWriter:
    """Context manager: write to a temporary object, publish on success, discard on error."""

    def __init__(self, folder: Folder, relative: str) -> None:
        self.folder = folder
        self.relative = relative
        self.staging = f"{relative}.tmp-{uuid.uuid4().hex[:8]}"

    def __enter__(self):
        self.folder.fs.makedirs(posixpath.dirname(self.folder.path(self.staging)), exist_ok=True)
        self.handle = self.folder.fs.open(self.folder.path(self.staging), "wb")
        return self.handle

    def __exit__(self, error_type, error, traceback) -> None:
        staging = self.folder.path(self.staging)
        try:
            self.handle.close()  # flushes: a full disk may raise here
            if error_type is None:
                self.folder.fs.mv(staging, self.folder.path(self.relative))
        except BaseException:
            _discard(self.folder.fs, staging)
            raise
        if error_type is not None:
            _discard(self.folder.fs, staging)


#: ``os.link`` errors of filesystems without hard links (FUSE mounts of object stores, SMB).
_NO_HARD_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS)


def _create_exclusive(target: str, data: bytes) -> bool:
    """``O_EXCL`` creation for filesystems without hard links; a failed write removes the file."""
    try:
        descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
    except BaseException:
        os.unlink(target)
        raise
    return True


def _discard(fs, path: str) -> None:
    """Remove a staging file after a failed write; a failure to remove it must not hide that one."""
    try:
        if fs.exists(path):
            fs.rm(path)
    except OSError as error:
        logger.warning("could not remove the temporary file %s: %s", path, error)


def _protocols(fs) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)
