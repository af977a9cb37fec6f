"""The identity of an input image: which version of its bytes was listed, read or labeled.

An identity is a short string whose prefix says its kind; two identities say the same bytes
only when they are equal, and they can only be compared when their kinds are the same
(:func:`comparable`):

``etag:<ETag>``
    an object on S3 (quotes removed). Every ``GET`` returns it with the bytes, and a
    ``ListObjectsV2`` page lists it for free, so a folder's listing tells which objects changed
    without reading them. (A version id is not used: a listing does not give it, and the ETag
    changes whenever the content does.)
``mtime:<st_mtime>:size:<st_size>``
    a local file, from the ``stat`` of the open file it was read from (the file replaced while
    it is read gives the identity of what was read), or from the stat a folder walk makes
    anyway. Conservative: a file rewritten with the same bytes (or only touched) has changed.
``sha256:<hex>``
    everything else (HTTP, ``memory://``, other object stores, rows of Parquet image files): the
    digest of the bytes read. Knowing it again means reading them again.

:func:`listed_identity` is what a listing or a ``HEAD``/``stat`` gives (None when the kind
needs the bytes); :func:`content_identity` digests bytes; :func:`read_identified` reads one
file with the identity of what it read.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Sequence
from typing import Any, Final

from fsspec.asyn import sync

from labeler.io.uris import S3_PROTOCOLS, is_local_fs

__all__ = [
    "comparable", "content_identity", "is_s3_fs", "listed_identity", "local_identity",
    "read_identified", "read_s3_identified",
]

ETAG: Final[str] = "etag"
MTIME: Final[str] = "mtime"
SHA256: Final[str] = "sha256"
#: Reads of a local file that changed while it was read, before the last one is kept.
_LOCAL_READS: Final[int] = 3


def kind(identity: str) -> str:
    """The kind of an identity (``etag``, ``mtime``, ``sha256``)."""
    return identity.partition(":")[0]


def comparable(recorded: str | None, current: str | None) -> bool:
    """Whether two identities can tell a change: both known and of the same kind."""
    return recorded is not None and current is not None and kind(recorded) == kind(current)


def is_s3_fs(fs: Any) -> bool:
    """Whether ``fs`` is s3fs (an S3 or S3-compatible object store)."""
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return bool(S3_PROTOCOLS.intersection(protocol)) and hasattr(fs, "call_s3")


def etag_identity(etag: str) -> str:
    """The identity of an S3 object from its ETag (a HEAD quotes it, an s3fs listing may not)."""
    return f"{ETAG}:{str(etag).strip(chr(34))}"


def local_identity(mtime: float, size: int) -> str:
    """The identity of a local file from its stat's ``st_mtime`` and ``st_size``."""
    return f"{MTIME}:{float(mtime)!r}:size:{int(size)}"


def content_identity(data: bytes) -> str:
    """The identity of bytes with no cheaper one: their sha256."""
    return f"{SHA256}:{hashlib.sha256(data).hexdigest()}"


def listed_identity(fs: Any, path: str, info: dict | None = None) -> str | None:
    """The identity a listing entry or metadata call gives for free, or None (the kind needs
    the bytes: not S3, not local).

    Args:
        fs: the file's filesystem.
        path: its path on ``fs``.
        info: its listing entry (s3fs's ``ls``/``info`` or a ``ListObjectsV2`` ``Contents``
            item, whose ``mtime`` and ``size`` are a local file's stat); without it a local
            file is stat'ed here (following links), an S3 object is asked (a HEAD).
    """
    if is_local_fs(fs):
        if info and not info.get("islink") and "mtime" in info and "size" in info:
            return local_identity(info["mtime"], info["size"])  # the walk's own stat
        stat = os.stat(path)
        return local_identity(stat.st_mtime, stat.st_size)
    if is_s3_fs(fs):
        etag = (info or {}).get("ETag") or fs.info(path).get("ETag")
        return etag_identity(etag) if etag else None
    return None


def read_local_identified(path: str) -> tuple[bytes, str]:
    """A local file's bytes and the identity of the file they were read from (read again when
    it changed while being read)."""
    for _ in range(_LOCAL_READS):
        with open(path, "rb") as handle:
            before = os.fstat(handle.fileno())
            data = handle.read()
            after = os.fstat(handle.fileno())
        if (before.st_mtime_ns, before.st_size) == (after.st_mtime_ns, after.st_size):
            break
    return data, local_identity(after.st_mtime, after.st_size)


async def _s3_get(fs: Any, path: str) -> tuple[bytes, str]:
    bucket, key, version = fs.split_path(path)
    versioned = {"VersionId": version} if version else {}
    response = await fs._call_s3("get_object", Bucket=bucket, Key=key, **versioned)
    try:
        data = await response["Body"].read()
    finally:
        response["Body"].close()
    return data, etag_identity(response["ETag"])


def read_s3_identified(fs: Any, paths: Sequence[str]) -> list[tuple[bytes, str] | Exception]:
    """S3 objects' bytes with the ETag of the same ``GET`` (concurrently, on s3fs's loop);
    an object that fails is its exception."""

    async def gather() -> list:
        return await asyncio.gather(*(_s3_get(fs, path) for path in paths),
                                    return_exceptions=True)

    return sync(fs.loop, gather)


def read_identified(fs: Any, path: str) -> tuple[bytes, str]:
    """One file's bytes and the identity of what was read (one request on S3)."""
    if is_local_fs(fs):
        return read_local_identified(path)
    if is_s3_fs(fs):
        outcome = read_s3_identified(fs, [path])[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome
    data = bytes(fs.cat_file(path))
    return data, content_identity(data)
