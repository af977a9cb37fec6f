"""Enumerate an input collection, streamed, in a fixed order, over any fsspec filesystem.

One ``--input`` URI names a collection (see docs/running.md):

  ``memory://...``), searched recursively for files whose extension is in
  :data:`~labeler.io.decode.IMAGE_EXTENSIONS` (case-insensitive). Files and folders whose name
  starts with ``.`` below the root are skipped, as are S3 "folder marker" keys ending in ``/``.
  Local symlinks to files are followed; symlinks to folders are not (no cycles).
* **a manifest**: ``.txt`` (one URI per line; surrounding whitespace stripped; blank lines and
  lines starting with ``#`` ignored; no inline comments since URIs may contain ``#``), ``.csv``
  (a ``uri`` column; header matched case-insensitively) or ``.parquet`` (a string ``uri``
  column, read in record batches, row group by row group). Relative entries are resolved against
  the manifest's folder; an entry starting with ``/`` in a remote manifest is resolved against
  the root of the manifest's bucket. Entries are used verbatim otherwise (no percent-decoding),
  not checked for existence (a missing file is a per-image read failure, not an enumeration
  error) and not de-duplicated. Blank/null entries are skipped and counted in a warning.
* **a Parquet file of image bytes** in the Hugging Face ``Image`` layout: a struct column with
  ``bytes`` (binary) and ``path`` (string) fields. The column is the one the ``huggingface``
  schema metadata declares as ``Image``, else the first top-level ``struct<bytes, path>`` column
  (or the one named by ``image_column``). A ``.parquet`` file with a ``uri`` column is a manifest
  even if it also has an image column.
* a single image file (an image extension): a collection of one.

Order
-----
Deterministic. Folder listings are in ascending order of the path relative to the root compared
as UTF-8 bytes, which is exactly the order S3 ``ListObjectsV2`` returns; other filesystems are
walked depth-first with each directory's entries sorted by ``name`` (directories as ``name/``),
which yields the same global order. Manifests keep their own order; Parquet rows are in row order.

Streaming and its limits
------------------------
Everything is a generator. On S3 (``s3fs``) a folder is listed with paginated, delimiter-less
``ListObjectsV2`` calls: at most one page (1000 keys) is in memory, whatever the bucket size, and
nothing is put in s3fs's listing cache. On other filesystems the walk holds the sorted listing of
each directory on the current path (a single flat directory of N entries costs O(N) memory:
fsspec's ``ls`` returns whole directories) and clears the filesystem's listing cache as it goes.
Manifests are read line by line (``.txt``/``.csv``) or record batch by record batch (``.parquet``);
Parquet image files are enumerated one row group at a time reading only the ``path`` field.

Identity (:class:`InputRef`)
----------------------------
``InputRef.uri`` is the string written as COCO ``file_name`` and ``images.parquet`` ``uri``. For
files it is the file's URI in the form of the input (plain absolute path for a local input without
a protocol; see :mod:`labeler.io.refs`).

A folder's listing also gives each image's identity for free where the store lists it
(:mod:`labeler.io.identity`: the ETag on S3, mtime and size on a local disk), in
``InputRef.identity``; manifest entries and Parquet rows have none (it would cost a request or
the bytes).

Credentials
-----------
Credentials embedded in the input URI are moved into the storage options (see
:mod:`labeler.io.uris`) and never appear in any ``InputRef``; reading then needs the same
credentials, so callers pass the storage options that :func:`~labeler.io.uris.split_uri_credentials`
returns. Credentials embedded in manifest entries are stripped from the entry (with one warning);
provide them through ``storage_options``. Secret query values of an entry (a pre-signed URL's
signature, a token) are redacted in ``InputRef.uri`` and kept, in memory only, in
``InputRef.read_uri``, which is what the workers read. Listing calls retry transient errors
(:mod:`labeler.io.retry`).
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any, Final

import pyarrow as pa
import pyarrow.parquet as pq

from labeler.errors import NotFoundError
from labeler.io.decode import has_image_extension
from labeler.io.identity import etag_identity, is_s3_fs, listed_identity
from labeler.io.parquet_images import (
    find_image_column,
    open_parquet,
    struct_field,
    struct_field_columns,
)
from labeler.io.refs import InputRef, parquet_row_uri, ref_from_uri
from labeler.io.retry import DEFAULT_RETRY, RetryPolicy
from labeler.io.uris import (
    InputError,
    base_uri,
    is_local_fs,
    join_relative,
    open_fs,
    parent_uri,
    redact_uri,
    relative_path_hint,
    resolve_uri,
    split_userinfo,
)

__all__ = ["folder_root", "iter_inputs", "list_files", "path_kind"]

logger = logging.getLogger(__name__)

_MANIFEST_TEXT: Final[str] = "txt"
_MANIFEST_CSV: Final[str] = "csv"
_PARQUET: Final[str] = "parquet"
_URI_COLUMN: Final[str] = "uri"
_S3_PAGE_SIZE: int | None = None  # ListObjectsV2 MaxKeys; None = the server's default (1000)


def _utf8_key(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


# ---------------------------------------------------------------------------------------------
# Folder enumeration
# ---------------------------------------------------------------------------------------------


class SkippedEntries:
    """Hidden files and folders (a name part starting with ``.``, ``..`` included) that a folder
    walk skipped: how many, and the first few (a hidden folder counts once, its content unseen)."""

    EXAMPLES = 5

    def __init__(self) -> None:
        self.count = 0
        self.examples: list[str] = []

    def add(self, path: str) -> None:
        self.count += 1
        if len(self.examples) < self.EXAMPLES:
            self.examples.append(path)

    def describe(self) -> str:
        """``N hidden files or folders skipped (e.g. a, b)``; empty when none were."""
        if not self.count:
            return ""
        more = ", ..." if self.count > len(self.examples) else ""
        return (f"{self.count} hidden files or folders skipped (names starting with '.', e.g. "
                f"{', '.join(self.examples)}{more})")


def _iter_s3_relative(
    fs: Any, root: str, retry: RetryPolicy, what: str, keep: Callable[[str], bool],
    skipped: SkippedEntries,
) -> Iterator[tuple[str, str | None]]:
    """(relative path, identity) of the objects under ``root`` (``bucket/prefix``) whose name
    ``keep`` accepts, page by page (the identity is the listed ETag)."""
    bucket, _, prefix = root.strip("/").partition("/")
    prefix = f"{prefix.rstrip('/')}/" if prefix else ""
    token: str | None = None
    previous: bytes | None = None
    warned_order = False
    while True:
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
        if _S3_PAGE_SIZE:
            kwargs["MaxKeys"] = _S3_PAGE_SIZE
        if token:
            kwargs["ContinuationToken"] = token
        page = retry.call(lambda kw=kwargs: fs.call_s3("list_objects_v2", **kw), what=what)
        for obj in page.get("Contents", ()):
            key = obj["Key"]
            if key.endswith("/"):
                continue  # folder marker
            relative = key[len(prefix) :]
            parts = relative.split("/")
            if any(part.startswith(".") for part in parts):
                skipped.add(relative)
                continue
            if not keep(parts[-1]):
                continue
            current = _utf8_key(relative)
            if previous is not None and current < previous and not warned_order:
                logger.warning(
                    "the server does not list %s in lexicographic order; "
                    "the enumeration order is the server's",
                    what,
                )
                warned_order = True
            previous = current
            yield relative, etag_identity(obj["ETag"]) if obj.get("ETag") else None
        if not page.get("IsTruncated"):
            return
        token = page.get("NextContinuationToken")
        if not token:
            raise InputError(f"listing of {what} is truncated without a continuation token", what)


def _sorted_children(
    fs: Any, directory: str, retry: RetryPolicy, what: str, keep: Callable[[str], bool],
    skipped: SkippedEntries,
) -> list[tuple[bytes, str, bool, str | None]]:
    """(sort key, path, is_dir, identity) of the visible folders in ``directory`` and of its
    files whose name ``keep`` accepts (a local file's identity from the listing's stat)."""
    listing = retry.call(lambda: fs.ls(directory, detail=True), what=what)
    with contextlib.suppress(Exception):
        fs.invalidate_cache(directory)
    local = is_local_fs(fs)
    parent = directory.rstrip("/")
    children: list[tuple[bytes, str, bool, str | None]] = []
    for entry in listing:
        name = str(entry["name"]).rstrip("/")
        if not name or name == parent:
            continue
        base = name.rsplit("/", 1)[-1]
        if base.startswith("."):
            skipped.add(name)
            continue
        kind = entry.get("type")
        if local and entry.get("islink"):
            if os.path.isdir(name):
                logger.info("not following symlinked folder %s", name)
                continue
            kind = "file" if os.path.isfile(name) else kind
        if kind == "directory":
            children.append((_utf8_key(base + "/"), name, True, None))
        elif kind == "file" and keep(base):
            identity = listed_identity(fs, name, entry) if local else None
            children.append((_utf8_key(base), name, False, identity))
    children.sort()
    return children


def _iter_walk_relative(
    fs: Any, root: str, retry: RetryPolicy, what: str, keep: Callable[[str], bool],
    skipped: SkippedEntries,
) -> Iterator[tuple[str, str | None]]:
    """(relative path, identity) of the files under ``root`` that ``keep`` accepts, depth
    first, in global byte order."""
    root = root.rstrip("/") or "/"
    prefix_len = len(root) if root == "/" else len(root) + 1
    stack = [iter(_sorted_children(fs, root, retry, what, keep, skipped))]
    while stack:
        try:
            _, name, is_dir, identity = next(stack[-1])
        except StopIteration:
            stack.pop()
            continue
        if is_dir:
            stack.append(iter(_sorted_children(fs, name, retry, what, keep, skipped)))
        else:
            yield name[prefix_len:], identity


def _iter_folder_entries(
    fs: Any, root: str, clean_uri: str, retry: RetryPolicy, keep: Callable[[str], bool],
    skipped: SkippedEntries | None = None,
) -> Iterator[tuple[str, str | None]]:
    """(URI in the form of ``clean_uri``, listed identity) of the files under ``root`` that
    ``keep`` accepts; hidden entries are counted in ``skipped``."""
    what = redact_uri(clean_uri)
    base = base_uri(clean_uri, fs, root)
    skipped = skipped if skipped is not None else SkippedEntries()
    relatives = (
        _iter_s3_relative(fs, root, retry, what, keep, skipped)
        if is_s3_fs(fs)
        else _iter_walk_relative(fs, root, retry, what, keep, skipped)
    )
    for relative, identity in relatives:
        yield join_relative(base, relative), identity


def _iter_folder(fs: Any, root: str, clean_uri: str, retry: RetryPolicy,
                 skipped: SkippedEntries | None) -> Iterator[InputRef]:
    for uri, identity in _iter_folder_entries(fs, root, clean_uri, retry, has_image_extension,
                                              skipped):
        yield InputRef(uri=uri, identity=identity)


# ---------------------------------------------------------------------------------------------
# Manifests
# ---------------------------------------------------------------------------------------------


class _EntryResolver:
    """Turns raw manifest entries into references, stripping embedded credentials; an entry
    whose query holds secret values gets a redacted ``uri`` and the full one as ``read_uri``."""

    def __init__(self, manifest_uri: str) -> None:
        self.base_dir = parent_uri(manifest_uri)
        self.what = redact_uri(manifest_uri)
        self.skipped = 0
        self._warned_credentials = False
        self._warned_secrets = False

    def __call__(self, entry: object) -> InputRef | None:
        if entry is None:
            self.skipped += 1
            return None
        text = str(entry).strip()
        if not text:
            self.skipped += 1
            return None
        clean, userinfo = split_userinfo(text)
        if userinfo is not None:
            if not self._warned_credentials:
                logger.warning(
                    "manifest %s has entries with embedded credentials (e.g. %s); they are "
                    "removed, pass credentials through storage_options",
                    self.what,
                    redact_uri(text),
                )
                self._warned_credentials = True
            text = clean
        ref = ref_from_uri(resolve_uri(text, self.base_dir))
        shown = redact_uri(ref.uri)
        if ref.is_parquet_row or shown == ref.uri:
            return ref
        if not self._warned_secrets:
            logger.info("manifest %s has entries with secret query values (e.g. %s): they are "
                        "read as given and stored redacted", self.what, shown)
            self._warned_secrets = True
        return InputRef(uri=shown, read_uri=ref.uri)

    def finish(self) -> None:
        if self.skipped:
            logger.warning("manifest %s: skipped %d blank entries", self.what, self.skipped)


def _iter_text_manifest(
    fs: Any, path: str, manifest_uri: str, retry: RetryPolicy
) -> Iterator[InputRef]:
    resolver = _EntryResolver(manifest_uri)
    handle = retry.call(lambda: fs.open(path, "rt", encoding="utf-8-sig"), what=resolver.what)
    with handle as stream:
        for line in stream:
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            ref = resolver(text)
            if ref is not None:
                yield ref
    resolver.finish()


def _csv_uri_index(header: list[str] | None, what: str) -> int:
    if header is None:
        raise InputError(f"CSV manifest {what} is empty", what)
    names = [name.strip().lower() for name in header]
    if _URI_COLUMN not in names:
        raise InputError(
            f"CSV manifest {what} has no '{_URI_COLUMN}' column "
            f"(columns: {', '.join(header[:20])})",
            what,
        )
    return names.index(_URI_COLUMN)


def _open_csv(fs: Any, path: str, what: str, retry: RetryPolicy) -> Any:
    return retry.call(lambda: fs.open(path, "rt", encoding="utf-8-sig", newline=""), what=what)


def _check_csv_manifest(fs: Any, path: str, what: str, retry: RetryPolicy) -> None:
    """Fail early (at ``iter_inputs`` call time) when the header has no ``uri`` column."""
    with _open_csv(fs, path, what, retry) as stream:
        _csv_uri_index(next(csv.reader(stream), None), what)


def _iter_csv_manifest(
    fs: Any, path: str, manifest_uri: str, retry: RetryPolicy
) -> Iterator[InputRef]:
    resolver = _EntryResolver(manifest_uri)
    with _open_csv(fs, path, resolver.what, retry) as stream:
        reader = csv.reader(stream)
        index = _csv_uri_index(next(reader, None), resolver.what)
        for record in reader:
            if not record:
                continue
            ref = resolver(record[index] if index < len(record) else None)
            if ref is not None:
                yield ref
    resolver.finish()


def _iter_parquet_manifest(parquet_file: pq.ParquetFile, manifest_uri: str) -> Iterator[InputRef]:
    resolver = _EntryResolver(manifest_uri)
    field_type = parquet_file.schema_arrow.field(_URI_COLUMN).type
    if pa.types.is_dictionary(field_type):
        field_type = field_type.value_type
    if not (pa.types.is_string(field_type) or pa.types.is_large_string(field_type)):
        raise InputError(
            f"Parquet manifest {resolver.what}: column '{_URI_COLUMN}' is {field_type}, "
            "expected string",
            resolver.what,
        )
    for batch in parquet_file.iter_batches(columns=[_URI_COLUMN], batch_size=8192):
        for value in batch.column(0).to_pylist():
            ref = resolver(value)
            if ref is not None:
                yield ref
    resolver.finish()


# ---------------------------------------------------------------------------------------------
# Parquet image files (Hugging Face Image layout)
# ---------------------------------------------------------------------------------------------


def _iter_parquet_images(
    parquet_file: pq.ParquetFile, column: str, parquet_uri: str
) -> Iterator[InputRef]:
    row = 0
    selection = struct_field_columns(column, ["path"])
    for group in range(parquet_file.metadata.num_row_groups):
        table = parquet_file.read_row_group(group, columns=selection)
        paths = struct_field(table, "path").to_pylist()
        for index, path in enumerate(paths):
            yield InputRef(
                uri=parquet_row_uri(parquet_uri, row, path),
                parquet=parquet_uri,
                column=column,
                row=row,
                row_group=group,
                index_in_group=index,
                path=path or None,
            )
            row += 1



# ---------------------------------------------------------------------------------------------
# iter_inputs, list_files, path_kind
# ---------------------------------------------------------------------------------------------


def _kind(fs: Any, path: str, what: str, retry: RetryPolicy) -> str | None:
    """``"file"``, ``"directory"`` (or another fsspec type), or None when nothing is there."""
    try:
        info = retry.call(lambda: fs.info(path), what=what)
    except FileNotFoundError:
        return None
    except PermissionError as exc:
        raise InputError(
            f"permission denied for input {what}: {redact_uri(str(exc))}", what
        ) from None
    except InputError:
        raise
    except Exception as exc:
        raise InputError(
            f"cannot access input {what}: {type(exc).__name__}: {redact_uri(str(exc))}", what
        ) from exc
    return info.get("type")


def path_kind(
    uri: str, *, storage_options: dict[str, Any] | None = None, retry: RetryPolicy = DEFAULT_RETRY
) -> str | None:
    """What ``uri`` names: ``"file"``, ``"directory"``, or None when it does not exist.

    Raises:
        InputError: it cannot be accessed (permissions, a storage error after the retries).
    """
    fs, path, clean = open_fs(uri, storage_options)
    return _kind(fs, path, redact_uri(clean), retry)


def list_files(
    uri: str,
    extensions: tuple[str, ...],
    *,
    storage_options: dict[str, Any] | None = None,
    retry: RetryPolicy = DEFAULT_RETRY,
) -> list[str]:
    """URIs of the files of a folder (recursively) or of one file, with one of ``extensions``.

    The folder walk is :func:`iter_inputs`'s: hidden files and folders skipped, symlinked
    folders not followed, ascending UTF-8 order of the relative path, URIs in the form of
    ``uri`` (plain paths for a local input without a protocol). ``extensions`` are lower-case
    with their dot (``".png"``), matched case-insensitively, a single file included.

    Raises:
        NotFoundError: nothing at ``uri`` (a FileNotFoundError; the message holds the redacted URI).
        InputError: ``uri`` cannot be accessed.
    """
    fs, path, clean = open_fs(uri, storage_options)
    what = redact_uri(clean)
    kind = _kind(fs, path, what, retry)
    if kind is None:
        raise NotFoundError(f"{what} does not exist{relative_path_hint(clean)}")
    wanted = tuple(extension.lower() for extension in extensions)

    def keep(name: str) -> bool:
        return name.lower().endswith(wanted)

    if kind != "directory":
        return [base_uri(clean, fs, path)] if keep(path) else []
    return [uri for uri, _ in _iter_folder_entries(fs, path, clean, retry, keep)]


def _extension(path: str) -> str:
    base = path.rstrip("/").rsplit("/", 1)[-1]
    return os.path.splitext(base)[1][1:].lower()


def _ensure_nonempty(refs: Iterator[InputRef], what: str) -> Iterator[InputRef]:
    empty = True
    for ref in refs:
        empty = False
        yield ref
    if empty:
        raise InputError(f"input {what} is empty: no images found", what)


def iter_inputs(
    uri: str,
    *,
    storage_options: dict[str, Any] | None = None,
    image_column: str | None = None,
    retry: RetryPolicy = DEFAULT_RETRY,
    skipped: SkippedEntries | None = None,
) -> Iterator[InputRef]:
    """Enumerate the images of the collection named by ``uri``, streamed, in a fixed order.

    The URI is checked at call time (it exists, its kind is supported, a manifest has its
    ``uri`` column, a Parquet file has an image column); enumeration itself is lazy.

    Args:
        uri: a folder, a ``.txt``/``.csv``/``.parquet`` manifest, a Parquet file of images in the
            Hugging Face ``Image`` layout, or one image file; any fsspec URI or a local path.
        storage_options: fsspec options for ``uri`` (e.g. ``key``, ``secret``, ``endpoint_url``
            for S3). Credentials embedded in ``uri`` are added to them.
        image_column: the struct column of a Parquet image file (default: detected).
        retry: backoff policy for transient listing/reading errors.
        skipped: where a folder walk counts the hidden entries it skips (as it goes).

    Returns:
        An iterator of :class:`InputRef`; when it yields nothing it raises :class:`InputError`
        (an empty collection) instead of stopping.

    Raises:
        InputError: ``uri`` does not exist, is not a supported kind of input, is malformed, or
            (during iteration) holds no image. Messages carry the redacted URI.
    """
    fs, path, clean = open_fs(uri, storage_options)
    what = redact_uri(clean)
    kind = _kind(fs, path, what, retry)
    if kind is None:
        raise InputError(f"input not found: {what}{relative_path_hint(clean)}", what)
    if kind == "directory":
        logger.info("enumerating folder %s", what)
        return _ensure_nonempty(_iter_folder(fs, path, clean, retry, skipped), what)
    if kind != "file":
        raise InputError(f"input {what} is neither a file nor a folder ({kind})", what)

    base = base_uri(clean, fs, path)
    extension = _extension(path)
    if extension == _MANIFEST_TEXT:
        logger.info("enumerating text manifest %s", what)
        return _ensure_nonempty(_iter_text_manifest(fs, path, base, retry), what)
    if extension == _MANIFEST_CSV:
        _check_csv_manifest(fs, path, what, retry)
        logger.info("enumerating CSV manifest %s", what)
        return _ensure_nonempty(_iter_csv_manifest(fs, path, base, retry), what)
    if extension == _PARQUET:
        parquet_file = open_parquet(fs, path, what, retry)
        schema = parquet_file.schema_arrow
        if image_column is None and _URI_COLUMN in schema.names:
            logger.info("enumerating Parquet manifest %s", what)
            return _ensure_nonempty(_iter_parquet_manifest(parquet_file, base), what)
        column = find_image_column(schema, image_column)
        if column is None:
            wanted = (
                f"column {image_column!r} of type struct<bytes, path>"
                if image_column
                else (f"a '{_URI_COLUMN}' string column or a struct<bytes, path> image column")
            )
            raise InputError(
                f"Parquet file {what} has no {wanted} (columns: {', '.join(schema.names[:20])})",
                what,
            )
        logger.info("enumerating Parquet image column %r of %s", column, what)
        return _ensure_nonempty(_iter_parquet_images(parquet_file, column, base), what)
    if has_image_extension(path):
        return iter([InputRef(uri=base, identity=listed_identity(fs, path))])
    raise InputError(
        f"input {what} is not a folder, a .txt/.csv/.parquet manifest, a Parquet image file "
        "or an image",
        what,
    )


def folder_root(uri: str, *, storage_options: dict[str, Any] | None = None) -> str | None:
    """The URI prefix of a folder input's images (``InputRef.uri`` = prefix ``/`` relative path).

    Returns ``None`` when ``uri`` is not a folder (a manifest, a Parquet file, one image): those
    inputs have no common image root. Credentials are never part of the result.
    """
    fs, path, clean = open_fs(uri, storage_options)
    try:
        is_folder = fs.isdir(path)
    except OSError:  # the listing reports access errors with their context
        return None
    return base_uri(clean, fs, path) if is_folder else None
