"""Read the bytes of input images: files, and rows of Parquet image files, with retries.

:func:`read_image_bytes` reads one :class:`~labeler.io.refs.InputRef` (or its URI);
:func:`read_many` reads a stream of them, a window at a time, fetching files concurrently and
each Parquet row group once. If a Parquet row's ``bytes`` is null and its ``path`` is set, the
bytes are read from ``path`` (resolved against the Parquet file's folder when relative); if both
are null the row reads as ``b""`` (decoding then fails with ``empty_file``). Transient errors
are retried (:mod:`labeler.io.retry`); in :func:`read_many` a failure is yielded in place of the
bytes, never raised. :func:`read_many` also gives the identity of what it read
(:mod:`labeler.io.identity`): the ETag of the same ``GET`` on S3, the stat of the open file on a
local disk, the sha256 of the bytes otherwise (Parquet rows included).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow.parquet as pq

from labeler.io.identity import (
    content_identity,
    is_s3_fs,
    listed_identity,
    read_identified,
    read_local_identified,
    read_s3_identified,
)
from labeler.io.parquet_images import (
    find_image_column,
    open_parquet,
    struct_field,
    struct_field_columns,
)
from labeler.io.refs import InputRef, ref_from_uri
from labeler.io.retry import DEFAULT_RETRY, RetryPolicy, is_transient_error
from labeler.io.uris import (
    InputError,
    is_local_fs,
    open_fs,
    parent_uri,
    redact_uri,
    resolve_uri,
)

__all__ = ["read_file", "read_file_identified", "read_image_bytes", "read_many",
           "with_identities"]

#: What :func:`read_many` yields per image: the ref, its bytes (or the error that stopped the
#: read), and the identity of the bytes read (None when the read failed).
Read = tuple[InputRef, bytes | Exception, str | None]


def read_file(
    uri: str, storage_options: dict[str, Any] | None = None, retry: RetryPolicy = DEFAULT_RETRY
) -> bytes:
    """The whole content of the file at ``uri``, retrying transient errors."""
    what = redact_uri(uri)

    def attempt() -> bytes:
        fs, path, _ = open_fs(uri, storage_options)
        return bytes(fs.cat_file(path))

    return retry.call(attempt, what=what)


def _row_group_of(parquet_file: pq.ParquetFile, row: int, what: str) -> tuple[int, int]:
    metadata = parquet_file.metadata
    start = 0
    for group in range(metadata.num_row_groups):
        count = metadata.row_group(group).num_rows
        if row < start + count:
            return group, row - start
        start += count
    raise IndexError(f"row {row} is beyond the {start} rows of {what}")


def _read_row_group_images(
    parquet_uri: str,
    column: str | None,
    groups: dict[int | None, list[InputRef]],
    storage_options: dict[str, Any] | None,
    retry: RetryPolicy,
) -> dict[InputRef, bytes | Exception]:
    """Read the rows ``groups`` asks for (row group -> refs) from one Parquet file."""
    what = redact_uri(parquet_uri)
    fs, path, _ = open_fs(parquet_uri, storage_options)
    parquet_file = open_parquet(fs, path, what, retry)
    results: dict[InputRef, bytes | Exception] = {}
    try:
        detected = find_image_column(parquet_file.schema_arrow, column)
        if detected is None:
            error = InputError(f"Parquet file {what} has no image column {column or ''}", what)
            for refs in groups.values():
                for ref in refs:
                    results[ref] = error
            return results
        # Refs built from a URI alone lack the row group: locate them from the footer.
        located: dict[int, list[tuple[InputRef, int]]] = {}
        for group, refs in groups.items():
            for ref in refs:
                if group is not None and ref.index_in_group is not None:
                    located.setdefault(group, []).append((ref, ref.index_in_group))
                    continue
                try:
                    row_group, index = _row_group_of(parquet_file, int(ref.row or 0), what)
                except IndexError as exc:
                    results[ref] = exc
                    continue
                located.setdefault(row_group, []).append((ref, index))
        selection = struct_field_columns(detected, ["bytes", "path"])
        for group, wanted in sorted(located.items()):
            try:
                table = retry.call(
                    lambda g=group: parquet_file.read_row_group(g, columns=selection), what=what
                )
                data = struct_field(table, "bytes")
                paths = struct_field(table, "path")
            except Exception as exc:  # noqa: BLE001 - per-image failure for every row asked
                for ref, _ in wanted:
                    results[ref] = exc
                continue
            for ref, index in wanted:
                if index >= len(data):
                    results[ref] = IndexError(
                        f"row {ref.row} is beyond row group {group} of {what}"
                    )
                    continue
                value = data[index].as_py()
                if value is not None:
                    results[ref] = bytes(value)
                    continue
                member = paths[index].as_py()
                if not member:
                    results[ref] = b""
                    continue
                try:
                    target = resolve_uri(member, parent_uri(parquet_uri))
                    results[ref] = read_file(target, storage_options, retry)
                except Exception as exc:  # noqa: BLE001 - per-image failure
                    results[ref] = exc
    finally:
        with contextlib.suppress(Exception):
            parquet_file.reader.close()  # type: ignore[attr-defined]
    return results


def read_image_bytes(
    ref: InputRef | str,
    *,
    storage_options: dict[str, Any] | None = None,
    retry: RetryPolicy = DEFAULT_RETRY,
) -> bytes:
    """Read the encoded bytes of one input image.

    Args:
        ref: the reference (or its URI, parsed with :func:`ref_from_uri`).
        storage_options: fsspec options (credentials, endpoint) for the file or Parquet file.
        retry: backoff policy; only transient errors are retried (see :func:`is_transient_error`).

    Returns:
        The file content (``b""`` for a Parquet row whose ``bytes`` and ``path`` are both null).

    Raises:
        FileNotFoundError, PermissionError: not retried.
        Exception: the last transient error once ``retry.attempts`` are used up, or any other
            storage error.
    """
    if isinstance(ref, str):
        ref = ref_from_uri(ref)
    if not ref.is_parquet_row:
        return read_file(ref.location, storage_options, retry)
    groups: dict[int | None, list[InputRef]] = {ref.row_group: [ref]}
    outcome = _read_row_group_images(str(ref.parquet), ref.column, groups, storage_options, retry)[
        ref
    ]
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def _identified_files(fs: Any, members: list[tuple[int, str, InputRef]],
                      storage_options: dict[str, Any] | None, retry: RetryPolicy,
                      ) -> list[tuple[bytes, str] | Exception]:
    """(bytes, identity) of files on one filesystem: concurrent ``GET``s on S3, one read at
    a time on a local disk, ``cat_ranges`` elsewhere; transient errors retried one by one."""
    paths = [path for _, path, _ in members]
    outcomes: list[tuple[bytes, str] | Exception]
    if is_local_fs(fs):
        outcomes = []
        for path in paths:
            try:
                outcomes.append(read_local_identified(path))
            except Exception as exc:  # noqa: BLE001 - per-image failure
                outcomes.append(exc)
    elif is_s3_fs(fs):
        try:
            outcomes = read_s3_identified(fs, paths)
        except Exception as exc:  # noqa: BLE001 - fall back to one read at a time
            outcomes = [exc] * len(paths)
    else:
        try:
            fetched: list[Any] = fs.cat_ranges(paths, None, None, on_error="return")
        except Exception as exc:  # noqa: BLE001 - fall back to one read at a time
            fetched = [exc] * len(paths)
        outcomes = [value if isinstance(value, Exception)
                    else (bytes(value), content_identity(bytes(value))) for value in fetched]
    for index, ((_, _, ref), outcome) in enumerate(zip(members, outcomes)):
        if isinstance(outcome, Exception) and is_transient_error(outcome):
            try:
                outcomes[index] = read_file_identified(ref.location, storage_options, retry)
            except Exception as exc:  # noqa: BLE001 - per-image failure
                outcomes[index] = exc
    return outcomes


def read_file_identified(uri: str, storage_options: dict[str, Any] | None = None,
                         retry: RetryPolicy = DEFAULT_RETRY) -> tuple[bytes, str]:
    """The content of the file at ``uri`` and the identity of what was read, with retries."""

    def attempt() -> tuple[bytes, str]:
        fs, path, _ = open_fs(uri, storage_options)
        return read_identified(fs, path)

    return retry.call(attempt, what=redact_uri(uri))


def _read_window(
    refs: list[InputRef], storage_options: dict[str, Any] | None, retry: RetryPolicy
) -> Iterator[Read]:
    results: dict[int, bytes | Exception] = {}
    identities: dict[int, str] = {}
    # Standalone files, grouped by filesystem and fetched concurrently where fsspec can.
    by_fs: dict[int, tuple[Any, list[tuple[int, str, InputRef]]]] = {}
    for position, ref in enumerate(refs):
        if ref.is_parquet_row:
            continue
        try:
            fs, path, _ = open_fs(ref.location, storage_options)
        except Exception as exc:  # noqa: BLE001 - per-image failure
            results[position] = exc
            continue
        by_fs.setdefault(id(fs), (fs, []))[1].append((position, path, ref))
    for fs, members in by_fs.values():
        for (position, _, _), outcome in zip(
                members, _identified_files(fs, members, storage_options, retry)):
            if isinstance(outcome, Exception):
                results[position] = outcome
            else:
                results[position], identities[position] = outcome
    # Parquet rows, grouped by file, then by row group: each row group is read once.
    by_parquet: dict[tuple[str, str | None], dict[int | None, list[InputRef]]] = {}
    positions: dict[InputRef, list[int]] = {}
    for position, ref in enumerate(refs):
        if not ref.is_parquet_row:
            continue
        groups = by_parquet.setdefault((str(ref.parquet), ref.column), {})
        members = groups.setdefault(ref.row_group, [])
        if ref not in positions:
            members.append(ref)
        positions.setdefault(ref, []).append(position)
    for (parquet_uri, column), groups in by_parquet.items():
        try:
            outcome = _read_row_group_images(parquet_uri, column, groups, storage_options, retry)
        except Exception as exc:  # noqa: BLE001 - the whole file failed: every row fails
            outcome = {ref: exc for refs in groups.values() for ref in refs}
        for ref, value in outcome.items():
            identity = None if isinstance(value, Exception) else content_identity(value)
            for position in positions[ref]:
                results[position] = value
                if identity is not None:
                    identities[position] = identity
    for position, ref in enumerate(refs):
        yield ref, results[position], identities.get(position)


def read_many(
    refs: Iterable[InputRef],
    *,
    storage_options: dict[str, Any] | None = None,
    retry: RetryPolicy = DEFAULT_RETRY,
    window: int = 64,
) -> Iterator[Read]:
    """Read many images efficiently; yields ``(ref, bytes or exception, identity)`` in input
    order (the identity of the bytes read, :mod:`labeler.io.identity`; None for a failure).

    Works through ``refs`` ``window`` at a time. Within a window, standalone files on the same
    filesystem are fetched together (concurrent ``GET``s on S3, ``cat_ranges`` on other
    filesystems), and Parquet rows are grouped by file and row group so each row group's image
    column is read once. Transient errors are retried per image with ``retry``; a failure never stops
    the iteration, it is yielded in place of the bytes.
    """
    for batch in _windows(refs, window):
        yield from _read_window(batch, storage_options, retry)


def _windows(refs: Iterable[InputRef], window: int) -> Iterator[list[InputRef]]:
    """``refs`` in lists of ``window`` (the last one shorter)."""
    if window < 1:
        raise ValueError("window must be >= 1")
    batch: list[InputRef] = []
    for ref in refs:
        batch.append(ref)
        if len(batch) >= window:
            yield batch
            batch = []
    if batch:
        yield batch


def with_identities(
    refs: Iterable[InputRef],
    *,
    storage_options: dict[str, Any] | None = None,
    retry: RetryPolicy = DEFAULT_RETRY,
    window: int = 64,
) -> Iterator[InputRef]:
    """``refs`` with the identity of each one's current version filled in where the listing
    left it out (:mod:`labeler.io.identity`), in order.

    Costs a ``HEAD`` per S3 object, a ``stat`` per local file, and the bytes of everything
    else (files elsewhere are read whole, Parquet rows a row group at a time). A ref that
    cannot be looked at keeps no identity (it is not compared).
    """
    for batch in _windows(refs, window):
        yield from _identify_window(batch, storage_options, retry)


def _identify_window(refs: list[InputRef], storage_options: dict[str, Any] | None,
                     retry: RetryPolicy) -> list[InputRef]:
    found: dict[int, str | None] = {}
    to_read: list[tuple[int, InputRef]] = []
    for position, ref in enumerate(refs):
        if ref.identity is not None:
            continue
        if not ref.is_parquet_row:
            try:
                fs, path, _ = open_fs(ref.location, storage_options)
                if is_local_fs(fs) or is_s3_fs(fs):
                    found[position] = retry.call(lambda fs=fs, path=path: listed_identity(fs, path),
                                                 what=redact_uri(ref.uri))
                    continue
            except Exception:  # noqa: BLE001 - not there or unreachable: nothing to compare
                found[position] = None
                continue
        to_read.append((position, ref))
    reads = read_many([ref for _, ref in to_read], storage_options=storage_options, retry=retry,
                      window=max(1, len(to_read)))
    for (position, _), (_, _, identity) in zip(to_read, reads):
        found[position] = identity
    return [dataclasses.replace(ref, identity=found[position]) if position in found else ref
            for position, ref in enumerate(refs)]
