"""Safetensors headers checked before any tensor is read: one line and exit 2 for a bad file.

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON, then the tensor
data. The readers (safetensors, diffusers, transformers) trust N and the JSON: a length of 2^62 or
a header whose offsets point past the data ends in their own exception deep inside a load, a
traceback for the user. :func:`parse_header` checks what they would trust, from the header alone:

* N fits the file (and safetensors' own 100 MB header bound);
* the header is a UTF-8 JSON object, ``__metadata__`` (when present) an object of strings;
* every tensor entry has a known ``dtype``, a ``shape`` of non-negative integers and
  ``data_offsets`` ``[begin, end]`` inside the data, ``end - begin`` being exactly the bytes its
  dtype and shape need.

:func:`check_file` and :func:`check_folder` apply it to files on disk (a model folder: every
component's weights), reading only the header.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from labeler.errors import UserError

#: safetensors refuses longer headers itself ("header too large").
MAX_HEADER_BYTES = 100_000_000
#: bytes per element of every dtype safetensors writes.
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}
METADATA = "__metadata__"


class MalformedSafetensors(UserError):
    """A safetensors file whose header cannot be trusted (one line, exit 2)."""


def header_length(prefix: bytes, size: int, source: str) -> int:
    """N, the header length of a ``size``-byte file whose first bytes are ``prefix``.

    Raises:
        MalformedSafetensors: fewer than 8 bytes, or N larger than the file or the bound.
    """
    if size < 8 or len(prefix) < 8:
        raise MalformedSafetensors(f"{source} is not a safetensors file (too short: {size} bytes)")
    (length,) = struct.unpack("<Q", prefix[:8])
    if length > size - 8 or length > MAX_HEADER_BYTES:
        raise MalformedSafetensors(
            f"{source} is not a safetensors file (bad header length: {length} bytes declared, "
            f"the file has {size})")
    return length


def parse_header(data: bytes, size: int, source: str = "<bytes>") -> dict:
    """The checked header of a ``size``-byte safetensors file.

    Args:
        data: the file's first ``8 + N`` bytes at least (the whole file is fine).
        size: the file's size in bytes.
        source: names the file in messages.

    Returns:
        the JSON header: tensor name -> ``{dtype, shape, data_offsets}``, plus ``__metadata__``.

    Raises:
        MalformedSafetensors: one line saying what is wrong (see the module docstring).
    """
    length = header_length(data, size, source)
    try:
        header = json.loads(data[8 : 8 + length])
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MalformedSafetensors(f"{source} is not a safetensors file ({error})") from None
    if not isinstance(header, dict):
        raise MalformedSafetensors(
            f"{source} is not a safetensors file (its header is a JSON "
            f"{type(header).__name__}, not an object)")
    metadata = header.get(METADATA)
    if metadata is not None and not (isinstance(metadata, dict)
                                     and all(isinstance(v, str) for v in metadata.values())):
        raise MalformedSafetensors(
            f"{source} is not a safetensors file ({METADATA} is not an object of strings)")
    for name, entry in header.items():
        if name != METADATA:
            _check_entry(name, entry, size - 8 - length, source)
    return header


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_entry(name: str, entry, data_bytes: int, source: str) -> None:
    """One tensor entry: known dtype, a shape of counts, offsets that hold exactly its bytes."""
    if not isinstance(entry, dict):
        raise MalformedSafetensors(f"{source}: tensor {name!r} is not a tensor description")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        raise MalformedSafetensors(f"{source}: tensor {name!r} has an unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_count(n) for n in shape):
        raise MalformedSafetensors(f"{source}: tensor {name!r} has a bad shape {shape!r}")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(n) for n in offsets)
            or not offsets[0] <= offsets[1] <= data_bytes
            or offsets[1] - offsets[0] != math.prod(shape) * DTYPE_BYTES[dtype]):
        raise MalformedSafetensors(
            f"{source}: tensor {name!r}: data offsets {offsets!r} do not hold its "
            f"{dtype} {shape!r} within the file's {data_bytes} data bytes")


def check_file(path: str | Path) -> dict:
    """The checked header of a local safetensors file, reading the header alone.

    Raises:
        MalformedSafetensors: see :func:`parse_header`.
    """
    path = Path(path)
    with path.open("rb") as handle:
        size = path.stat().st_size
        prefix = handle.read(8)
        length = header_length(prefix, size, str(path))
        return parse_header(prefix + handle.read(length), size, str(path))


def check_folder(folder: str | Path) -> int:
    """Check every ``*.safetensors`` under ``folder`` (a model: all its components).

    Returns:
        how many files were checked.

    Raises:
        MalformedSafetensors: the first bad file, named.
    """
    files = sorted(Path(folder).rglob("*.safetensors"))
    for path in files:
        check_file(path)
    return len(files)
