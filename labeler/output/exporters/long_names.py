"""Short, stable names for the files an export derives from image names.

An object store takes keys of 1024 bytes with no limit per ``/``-separated part; a file system
takes 255 bytes per part (and a few KB per path). An export that writes a file per image
(``yolo-seg`` labels, ``label-maps`` masks, images placed with ``--images copy|link``) names it
after the image's ``file_name``, so a long key would abort it with "file name too long". Such a
name is replaced by :func:`export_name`: flat, ``<16 hex of its sha256>_<its last characters>``
with its extension, the same for the same name in every export. The original stays in the
export's metadata: ``export.json`` maps every short name to its original (``long_names``), and
the formats with a per-image record keep it there too (``original_file_name``).
"""

from __future__ import annotations

import hashlib
import posixpath
import re

#: Longest part of a derived path kept as it is: 255 bytes (ext4, XFS, APFS, NTFS) less room for
#: the export's own suffixes (``.txt``/``.png`` for a stem, ``.tmp-xxxxxxxx`` while it is written).
MAX_PART_BYTES = 200
#: Longest name kept as it is, whatever its parts (under every system's path limit, with room
#: for the export folder in front).
MAX_NAME_BYTES = 1024
#: Characters of the original stem kept at the end of a short name, to help a reader.
TAIL_CHARACTERS = 48
_UNSAFE = re.compile(r"[^A-Za-z0-9._\-]+")


def is_too_long(file_name: str) -> bool:
    """Whether a file named after ``file_name`` could exceed a file system's limits."""
    return (len(file_name.encode("utf-8")) > MAX_NAME_BYTES
            or any(len(part.encode("utf-8")) > MAX_PART_BYTES for part in file_name.split("/")))


def export_name(file_name: str) -> str:
    """``file_name`` itself, or when :func:`is_too_long`, a flat stable short name:
    ``<sha256 of file_name, 16 hex>_<last characters of its stem><extension>``."""
    if not is_too_long(file_name):
        return file_name
    digest = hashlib.sha256(file_name.encode("utf-8")).hexdigest()[:16]
    stem, extension = posixpath.splitext(posixpath.basename(file_name))
    if len(extension) > 16 or _UNSAFE.search(extension):
        stem, extension = stem + extension, ""
    tail = _UNSAFE.sub("_", stem)[-TAIL_CHARACTERS:].strip("._")
    return f"{digest}_{tail}{extension}" if tail else f"{digest}{extension}"


def original_name_field(original_name: str | None) -> dict[str, str]:
    """``{"original_file_name": ...}`` for a per-image record whose name was shortened, else ``{}``."""
    return {"original_file_name": original_name} if original_name else {}
