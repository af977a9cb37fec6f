"""Parquet files of image bytes in the Hugging Face ``Image`` layout.

Such a file has a struct column with ``bytes`` (binary) and ``path`` (string) fields. The column is
the one the ``huggingface`` schema metadata declares as ``Image``, else the first top-level
``struct<bytes, path>`` column (or the one asked for by name).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from labeler.io.retry import RetryPolicy
from labeler.io.uris import InputError

__all__ = ["find_image_column", "open_parquet", "struct_field", "struct_field_columns"]


def _is_image_struct(dtype: pa.DataType) -> bool:
    if not pa.types.is_struct(dtype):
        return False
    fields = {dtype.field(i).name: dtype.field(i).type for i in range(dtype.num_fields)}
    data, path = fields.get("bytes"), fields.get("path")
    if data is None or path is None:
        return False
    binary = pa.types.is_binary(data) or pa.types.is_large_binary(data)
    string = pa.types.is_string(path) or pa.types.is_large_string(path)
    return binary and string


def find_image_column(schema: pa.Schema, requested: str | None = None) -> str | None:
    """The Hugging Face ``Image`` column of a Parquet schema, or ``None``.

    ``requested`` must name a ``struct<bytes, path>`` column. Otherwise the ``huggingface``
    schema metadata's first feature of ``_type`` ``Image`` wins, then the first top-level
    ``struct<bytes, path>`` column.
    """
    if requested is not None:
        index = schema.get_field_index(requested)
        if index == -1 or not _is_image_struct(schema.field(index).type):
            return None
        return requested
    metadata = schema.metadata or {}
    raw = metadata.get(b"huggingface")
    if raw:
        try:
            features = json.loads(raw).get("info", {}).get("features", {})
        except (ValueError, AttributeError):
            features = {}
        if isinstance(features, dict):
            for name, spec in features.items():
                if isinstance(spec, dict) and spec.get("_type") == "Image":
                    index = schema.get_field_index(name)
                    if index != -1 and _is_image_struct(schema.field(index).type):
                        return str(name)
    for schema_field in schema:
        if _is_image_struct(schema_field.type):
            return schema_field.name
    return None


def struct_field_columns(column: str, fields: Iterable[str]) -> list[str]:
    """Column selection for struct fields; whole column when the name itself has a dot."""
    if "." in column:
        return [column]
    return [f"{column}.{name}" for name in fields]


def struct_field(table: pa.Table, name: str) -> pa.Array:
    """Field ``name`` of the struct column that ``table`` holds as its only column."""
    struct = table.column(0).combine_chunks()
    if isinstance(struct, pa.ChunkedArray):  # pragma: no cover - defensive
        struct = pa.concat_arrays(struct.chunks)
    values = struct.field(name)
    if struct.null_count:
        # A null struct makes its fields null too, whatever the child arrays hold.
        values = pc.if_else(struct.is_valid(), values, pa.scalar(None, values.type))
    return values


def open_parquet(fs: Any, path: str, what: str, retry: RetryPolicy) -> pq.ParquetFile:
    """Open a Parquet file's footer, retrying transient errors.

    Raises:
        InputError: the file is not Parquet (``what`` is the redacted URI for the message).
    """

    def attempt() -> pq.ParquetFile:
        handle = fs.open(path, "rb")
        try:
            return pq.ParquetFile(handle)
        except BaseException:
            handle.close()
            raise

    try:
        return retry.call(attempt, what=what)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise InputError(f"{what} is not a readable Parquet file: {exc}", what) from None
