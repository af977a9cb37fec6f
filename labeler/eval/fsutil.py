"""Small fsspec helpers shared by ``labeler.eval`` and ``labeler.preview``.

Every read and write goes through fsspec, so local paths and URIs (``memory://``, ``s3://``,
``gs://``, ...) behave the same.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

import fsspec


def join(base: str, *parts: str) -> str:
    """Join path parts onto a local path or URI with ``/`` (no normalisation of the scheme)."""
    out = base.rstrip("/")
    for part in parts:
        out = out + "/" + part.strip("/")
    return out


def exists(uri: str) -> bool:
    """True when ``uri`` names an existing file or folder."""
    fs, path = fsspec.core.url_to_fs(uri)
    return bool(fs.exists(path))


def isdir(uri: str) -> bool:
    """True when ``uri`` names a folder."""
    fs, path = fsspec.core.url_to_fs(uri)
    return bool(fs.isdir(path))


def read_bytes(uri: str) -> bytes:
    """Read a whole file."""
    with fsspec.open(uri, "rb") as f:
        return f.read()


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole file, creating parent folders where the filesystem needs them."""
    fs, path = fsspec.core.url_to_fs(uri)
    parent = posixpath.dirname(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(path, "wb") as f:
        f.write(data)


def write_text(uri: str, text: str) -> None:
    """Write a UTF-8 text file."""
    write_bytes(uri, text.encode("utf-8"))


def read_json(uri: str) -> Any:
    """Read a JSON file."""
    return json.loads(read_bytes(uri).decode("utf-8"))


def find_files(uri: str, extensions: tuple[str, ...]) -> list[str]:
    """Files under folder ``uri`` (recursive) whose name ends with one of ``extensions``.

    The match is case-insensitive; the result is sorted and holds full URIs that fsspec opens
    (local paths are returned as plain paths).
    """
    fs, path = fsspec.core.url_to_fs(uri)
    found = fs.find(path)
    exts = tuple(e.lower() for e in extensions)
    out = [p for p in found if p.lower().endswith(exts)]
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("file", "local"):
        return sorted(out)
    return sorted(fs.unstrip_protocol(p) for p in out)


def basename(uri: str) -> str:
    """Last path component of a path or URI (query strings are not stripped)."""
    return posixpath.basename(uri.rstrip("/"))


def stem(uri: str) -> str:
    """File name without its last extension."""
    name = basename(uri)
    root, _ = posixpath.splitext(name)
    return root or name
