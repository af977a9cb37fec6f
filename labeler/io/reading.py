"""Read the bytes of input images: files, and rows of Parquet image files, with retries.

:func:`read_image_bytes` reads one :class:`~labeler.io.refs.InputRef` (or its URI);
:func:`read_many` reads a stream of them, a window at a time, fetching files concurrently and
each Parquet row group once. If a Parquet row's ``bytes`` is null and its ``path`` is set, the
bytes are read from ``path`` (resolved against the Parquet file's folder when relative); if both
are null the row reads as ``b""`` (decoding then fails with ``empty_file``). Transient errors
are retried (:mod:`labeler.io.retry`); in :func:`read_many` a failure is yielded in place of the
bytes, never raised.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow.parquet as pq

from labeler.io.parquet_images import (
    find_image_column,
    open_parquet,
    struct_field,
    struct_field_columns,
)
from labeler.io.refs import InputRef, ref_from_uri
from labeler.io.retry import DEFAULT_RETRY, RetryPolicy, is_transient_error
from labeler.io.uris import InputError, open_fs, parent_uri, redact_uri, resolve_uri

__all__ = ["read_file", "read_image_bytes", "read_many"]


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


def _read_window(
    refs: list[InputRef], storage_options: dict[str, Any] | None, retry: RetryPolicy
) -> Iterator[tuple[InputRef, bytes | Exception]]:
    results: dict[int, bytes | Exception] = {}
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
        paths = [path for _, path, _ in members]
        try:
            fetched: list[Any] = fs.cat_ranges(paths, None, None, on_error="return")
        except Exception as exc:  # noqa: BLE001 - fall back to one read at a time
            fetched = [exc] * len(paths)
        for (position, _, ref), value in zip(members, fetched):
            if isinstance(value, Exception) and is_transient_error(value):
                try:
                    value = read_file(ref.location, storage_options, retry)
                except Exception as exc:  # noqa: BLE001 - per-image failure
                    value = exc
            results[position] = value if isinstance(value, Exception) else bytes(value)
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
            for position in positions[ref]:
                results[position] = value
    for position, ref in enumerate(refs):
        yield ref, results[position]


def read_many(
    refs: Iterable[InputRef],
    *,
    storage_options: dict[str, Any] | None = None,
    retry: RetryPolicy = DEFAULT_RETRY,
    window: int = 64,
) -> Iterator[tuple[InputRef, bytes | Exception]]:
    """Read many images efficiently; yields ``(ref, bytes or exception)`` in input order.

    Works through ``refs`` ``window`` at a time. Within a window, standalone files on the same
    filesystem are fetched with one ``cat_ranges`` call (concurrent on async filesystems such as
    s3fs), and Parquet rows are grouped by file and row group so each row group's image column
    is read once. Transient errors are retried per image with ``retry``; a failure never stops
    the iteration, it is yielded in place of the bytes.
    """
    if window < 1:
        raise ValueError("window must be >= 1")
    batch: list[InputRef] = []
    for ref in refs:
        batch.append(ref)
        if len(batch) >= window:
            yield from _read_window(batch, storage_options, retry)
            batch = []
    if batch:
        yield from _read_window(batch, storage_options, retry)
