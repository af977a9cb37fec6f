"""Enumerate an input collection and read image bytes, over any fsspec filesystem.

One ``--input`` URI names a collection (see ``shared/design/contracts.md``):

* **a folder** (``/data/imgs``, ``file:///data/imgs``, ``s3://bucket/prefix``, ``gs://...``,
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
a protocol, else ``protocol://...``). For a row of a Parquet image file it is::

    <parquet-uri>#row=<i>               (the struct's path is null or empty)
    <parquet-uri>#row=<i>&path=<path>   (the struct's path, verbatim, not encoded)

with ``i`` the 0-based row index in the file. :func:`parse_parquet_row_uri` and
:func:`ref_from_uri` invert it; a manifest entry of that form designates that row. If a row's
``bytes`` is null and its ``path`` is set, the bytes are read from ``path`` (resolved against the
Parquet file's folder when relative); if both are null the row reads as ``b""`` (decoding then
fails with ``empty_file``).

Credentials
-----------
URIs are always passed through :func:`redact_uri` before they reach a message or a log line.
Credentials embedded in the input URI (``s3://KEY:SECRET@bucket/...``; ``s3://anonymous@bucket``)
are moved into the storage options by :func:`split_uri_credentials` and never appear in any
``InputRef``; reading then needs the same credentials, so callers should use the storage options
that function returns (or pass them explicitly). Credentials embedded in manifest entries are
stripped from the entry (with one warning); provide them through ``storage_options``.

Retries
-------
:func:`read_image_bytes`, :func:`read_many` and the listing calls retry errors that are plausibly
transient (connection errors, timeouts, HTTP 429/5xx, ``SlowDown``, plain ``OSError`` from s3fs)
with capped exponential backoff and jitter (:class:`RetryPolicy`); never ``FileNotFoundError``,
``PermissionError`` or other client errors. s3fs/botocore also retry internally, so the total
number of HTTP attempts can be larger than ``RetryPolicy.attempts``.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import logging
import os
import posixpath
import random
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from labeler.io.decode import has_image_extension

__all__ = [
    "InputError",
    "InputRef",
    "RetryPolicy",
    "is_transient_error",
    "iter_inputs",
    "parquet_row_uri",
    "parse_parquet_row_uri",
    "read_image_bytes",
    "read_many",
    "redact_uri",
    "ref_from_uri",
    "resolve_uri",
    "split_uri_credentials",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_MANIFEST_TEXT: Final[str] = "txt"
_MANIFEST_CSV: Final[str] = "csv"
_PARQUET: Final[str] = "parquet"
_URI_COLUMN: Final[str] = "uri"
_S3_PAGE_SIZE: int | None = None  # ListObjectsV2 MaxKeys; None = the server's default (1000)
_S3_PROTOCOLS: Final[frozenset[str]] = frozenset({"s3", "s3a"})
# Protocols whose paths start at one root, with no bucket or host in the URI.
_ROOTED_PROTOCOLS: Final[frozenset[str]] = frozenset({"file", "local", "memory"})
_SCHEME_RE: Final[re.Pattern[str]] = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_ROW_FRAGMENT_RE: Final[re.Pattern[str]] = re.compile(r"#row=(\d+)(?:&path=(.*))?\Z", re.DOTALL)
_SENSITIVE_QUERY_KEYS: Final[tuple[str, ...]] = (
    "signature",
    "credential",
    "token",
    "secret",
    "password",
    "passwd",
    "sig",
    "key",
    "auth",
)
_REDACTED: Final[str] = "***"


class InputError(Exception):
    """The input collection cannot be enumerated (missing, empty, unreadable, malformed).

    ``uri`` holds the redacted URI the message is about.
    """

    def __init__(self, message: str, uri: str = "") -> None:
        super().__init__(message, uri)
        self.message = message
        self.uri = uri

    def __str__(self) -> str:
        return self.message


# ---------------------------------------------------------------------------------------------
# URIs: redaction, credentials, resolution
# ---------------------------------------------------------------------------------------------


def _redact_one(uri: str) -> str:
    match = _SCHEME_RE.match(uri)
    if not match:
        return uri
    head = match.group(0)
    rest = uri[len(head) :]
    # The authority ends at the first '/', '?' or '#'; userinfo is everything before its last '@'.
    end = len(rest)
    for sep in "/?#":
        pos = rest.find(sep)
        if pos != -1:
            end = min(end, pos)
    authority, tail = rest[:end], rest[end:]
    if "@" in authority:
        authority = _REDACTED + "@" + authority.rsplit("@", 1)[1]
    if "?" in tail:
        path, _, query_and_fragment = tail.partition("?")
        query, hash_sign, fragment = query_and_fragment.partition("#")
        parts = []
        for item in query.split("&"):
            name, eq, _value = item.partition("=")
            lowered = name.lower()
            if eq and any(key in lowered for key in _SENSITIVE_QUERY_KEYS):
                parts.append(f"{name}={_REDACTED}")
            else:
                parts.append(item)
        tail = path + "?" + "&".join(parts) + hash_sign + fragment
    return head + authority + tail


def redact_uri(uri: str) -> str:
    """Return ``uri`` with embedded credentials replaced by ``***``.

    Removes the userinfo of every URL in an fsspec chain (``s3://KEY:SECRET@bucket/x`` ->
    ``s3://***@bucket/x``; ``simplecache::s3://...`` is handled part by part) and the values of
    query parameters whose name suggests a secret (``X-Amz-Signature``, ``X-Amz-Credential``,
    ``token``, ``sig``, ``key``, ...). Strings that are not URLs are returned unchanged.
    """
    if not isinstance(uri, str):
        uri = str(uri)
    return "::".join(_redact_one(part) for part in uri.split("::"))


def _split_userinfo(uri: str) -> tuple[str, str | None]:
    """Split ``scheme://userinfo@rest`` into (``scheme://rest``, userinfo)."""
    match = _SCHEME_RE.match(uri)
    if not match:
        return uri, None
    head = match.group(0)
    rest = uri[len(head) :]
    end = len(rest)
    for sep in "/?#":
        pos = rest.find(sep)
        if pos != -1:
            end = min(end, pos)
    authority = rest[:end]
    if "@" not in authority:
        return uri, None
    userinfo, host = authority.rsplit("@", 1)
    return head + host + rest[end:], userinfo


def split_uri_credentials(uri: str) -> tuple[str, dict[str, Any]]:
    """Move credentials embedded in ``uri`` into fsspec storage options.

    ``s3://KEY:SECRET@bucket/p`` -> (``s3://bucket/p``, ``{"key": KEY, "secret": SECRET}``);
    ``s3://anonymous@bucket/p`` -> (``s3://bucket/p``, ``{"anon": True}``). For other protocols
    the filesystem class's own URL parsing supplies the options (e.g. ``username``/``password``
    for ftp/sftp/smb) and the userinfo is removed from the URI. Chained URLs are not split.

    Returns:
        The URI without credentials, and the options to merge into ``storage_options``.
    """
    if "::" in uri:
        return uri, {}
    clean, userinfo = _split_userinfo(uri)
    if userinfo is None:
        return uri, {}
    protocol = uri.split("://", 1)[0].lower()
    if protocol in _S3_PROTOCOLS:
        if userinfo == "anonymous":
            return clean, {"anon": True}
        key, _, secret = userinfo.partition(":")
        options: dict[str, Any] = {"key": key}
        if secret:
            options["secret"] = secret
        return clean, options
    try:
        cls = fsspec.get_filesystem_class(protocol)
        options = dict(cls._get_kwargs_from_urls(uri))
    except Exception:  # noqa: BLE001 - unknown protocol: keep the URI, the open will explain
        return uri, {}
    return clean, options


def resolve_uri(entry: str, base_dir: str) -> str:
    """Resolve a manifest entry against the URI of the folder holding the manifest.

    Entries with a protocol (``s3://``, ``file://``, chained ``a::b``) are returned as is. A
    relative entry is joined to ``base_dir`` and normalised (``./`` and ``../`` collapsed). An
    entry starting with ``/`` is an absolute path for local (and ``file://``, ``memory://``)
    manifests and is taken relative to the bucket (or host) of a remote manifest.
    """
    if _SCHEME_RE.match(entry) or "::" in entry:
        return entry
    match = _SCHEME_RE.match(base_dir)
    if not match:
        return os.path.normpath(os.path.join(base_dir, entry))
    scheme = match.group(1)
    rest = base_dir[len(match.group(0)) :]
    if entry.startswith("/"):
        if scheme in _ROOTED_PROTOCOLS or rest.startswith("/"):
            return f"{scheme}://{posixpath.normpath(entry)}"
        root = rest.split("/", 1)[0]
        return f"{scheme}://{root}{posixpath.normpath(entry)}"
    return f"{scheme}://{posixpath.normpath(posixpath.join(rest, entry))}"


def _parent_uri(uri: str) -> str:
    stripped = uri.rstrip("/")
    if "/" not in stripped:
        return stripped
    parent = stripped.rsplit("/", 1)[0]
    if parent.endswith(":/"):  # "s3://bucket" has no parent below the scheme
        return stripped
    return parent


# ---------------------------------------------------------------------------------------------
# References
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputRef:
    """One input image: a file, or one row of a Parquet file of image bytes.

    Frozen and picklable (plain strings and integers), so it can be shipped to Ray workers and
    written as columns of a manifest.

    Attributes:
        uri: the identity written as COCO ``file_name`` (see the module docstring for the
            ``#row=`` scheme). Never contains credentials.
        parquet: for a Parquet row, the URI of the Parquet file; ``None`` for a file.
        column: for a Parquet row, the image struct column (``None``: detect when reading).
        row: for a Parquet row, the 0-based row index in the file.
        row_group: for a Parquet row, the row group holding it (``None``: found from the footer).
        index_in_group: for a Parquet row, its index inside ``row_group``.
        path: for a Parquet row, the struct's ``path`` field (``None`` when null).
    """

    uri: str
    parquet: str | None = None
    column: str | None = None
    row: int | None = None
    row_group: int | None = None
    index_in_group: int | None = None
    path: str | None = None

    @property
    def is_parquet_row(self) -> bool:
        """Whether this designates a row of a Parquet image file (not a standalone file)."""
        return self.parquet is not None

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (for Parquet/JSON manifests); inverse of :meth:`from_dict`."""
        return {
            "uri": self.uri,
            "parquet": self.parquet,
            "column": self.column,
            "row": self.row,
            "row_group": self.row_group,
            "index_in_group": self.index_in_group,
            "path": self.path,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputRef:
        """Rebuild a reference from :meth:`to_dict` output (unknown keys are ignored)."""
        names = ("parquet", "column", "row", "row_group", "index_in_group", "path")
        return cls(uri=str(data["uri"]), **{name: data.get(name) for name in names})


def parquet_row_uri(parquet_uri: str, row: int, path: str | None = None) -> str:
    """Build the identity URI of row ``row`` of a Parquet image file (see module docstring)."""
    uri = f"{parquet_uri}#row={int(row)}"
    return f"{uri}&path={path}" if path else uri


def parse_parquet_row_uri(uri: str) -> tuple[str, int, str | None] | None:
    """Invert :func:`parquet_row_uri`: (parquet URI, row, path) or ``None`` if not of that form.

    The Parquet URI must end with ``.parquet`` (case-insensitive); the first ``#row=`` after such
    a prefix is used, so paths may themselves contain ``#row=``.
    """
    start = 0
    while True:
        pos = uri.find("#row=", start)
        if pos == -1:
            return None
        prefix = uri[:pos]
        match = _ROW_FRAGMENT_RE.match(uri, pos)
        if prefix.lower().endswith(".parquet") and match:
            return prefix, int(match.group(1)), match.group(2) or None
        start = pos + 1


def ref_from_uri(uri: str) -> InputRef:
    """Turn a URI (a file, or a ``#row=`` Parquet row URI) back into an :class:`InputRef`."""
    parsed = parse_parquet_row_uri(uri)
    if parsed is None:
        return InputRef(uri=uri)
    parquet, row, path = parsed
    return InputRef(uri=uri, parquet=parquet, row=row, path=path)


# ---------------------------------------------------------------------------------------------
# Retries
# ---------------------------------------------------------------------------------------------

_PERMANENT_ERRNOS: Final[frozenset[int]] = frozenset(
    {
        errno.ENOENT,
        errno.EACCES,
        errno.EPERM,
        errno.EISDIR,
        errno.ENOTDIR,
        errno.EINVAL,
        errno.ENAMETOOLONG,
        errno.EEXIST,
        errno.EROFS,
    }
)
_TRANSIENT_CODES: Final[frozenset[str]] = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "TooManyRequests",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
        "ServerBusy",
        "503",
        "500",
        "502",
        "504",
        "429",
    }
)
_TRANSIENT_NAME_PARTS: Final[tuple[str, ...]] = (
    "ConnectionError",  # botocore EndpointConnectionError, ConnectionClosedError, aiohttp
    "ConnectorError",
    "ServerDisconnected",
    "Timeout",  # ReadTimeoutError, ConnectTimeoutError, asyncio/FSTimeoutError
    "IncompleteRead",
    "ResponseStreamingError",
    "ClientPayloadError",
    "ProtocolError",
    "RemoteDisconnected",
)


def _status_and_code(exc: BaseException) -> tuple[int | None, str | None]:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        meta = response.get("ResponseMetadata") or {}
        error = response.get("Error") or {}
        status = meta.get("HTTPStatusCode")
        return (int(status) if isinstance(status, int) else None), error.get("Code")
    status = getattr(exc, "status", None) or getattr(exc, "code", None)
    valid = isinstance(status, int) and not isinstance(status, bool) and 100 <= status <= 599
    return (status if valid else None), None


def _specific_verdict(exc: BaseException) -> bool | None:
    """True/False when ``exc`` itself says whether it is transient; None when it does not."""
    if isinstance(
        exc,
        (
            FileNotFoundError,
            PermissionError,
            IsADirectoryError,
            NotADirectoryError,
            FileExistsError,
        ),
    ):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    names = [cls.__name__ for cls in type(exc).__mro__]
    if any(part in name for name in names for part in _TRANSIENT_NAME_PARTS):
        return True
    status, code = _status_and_code(exc)
    if code in _TRANSIENT_CODES:
        return True
    if status is not None and status >= 400:
        return status == 429 or status >= 500
    text = str(exc)
    if "SlowDown" in text or "reduce your request rate" in text:
        return True
    if isinstance(exc, OSError) and exc.errno in _PERMANENT_ERRNOS:
        return False
    return None


def _exception_chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        if current.__cause__ is not None:
            current = current.__cause__
        elif current.__suppress_context__:
            current = None
        else:
            current = current.__context__
    return chain


def is_transient_error(exc: BaseException) -> bool:
    """Whether retrying the operation that raised ``exc`` may succeed.

    Transient: connection errors, timeouts, HTTP 429 and 5xx, S3 ``SlowDown``/``InternalError``/
    ``ServiceUnavailable``, and other ``OSError`` (what s3fs raises for unclassified service
    errors, unless its cause shows a 4xx status). Permanent: ``FileNotFoundError``,
    ``PermissionError``, directory errors, HTTP 4xx, ``ValueError``/``TypeError`` and everything
    not recognised. The ``__cause__``/``__context__`` chain is consulted when the exception
    itself does not decide.
    """
    chain = _exception_chain(exc)
    for item in chain:
        verdict = _specific_verdict(item)
        if verdict is not None:
            return verdict
    return any(isinstance(item, OSError) for item in chain)


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with jitter for transient storage errors.

    The n-th retry (n = 1, 2, ...) waits ``min(max_delay, base_delay * 2 ** (n - 1))`` seconds,
    multiplied by a random factor in ``[1 - jitter, 1]``. ``attempts`` counts the first try.
    """

    attempts: int = 5
    base_delay: float = 0.2
    max_delay: float = 10.0
    jitter: float = 0.5
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be >= 1")
        if self.base_delay < 0 or self.max_delay < 0 or not 0 <= self.jitter <= 1:
            raise ValueError("delays must be >= 0 and jitter within [0, 1]")

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        base = min(self.max_delay, self.base_delay * (2 ** (retry - 1)))
        return base * (1.0 - self.jitter * random.random())

    def call(self, fn: Callable[[], T], *, what: str) -> T:
        """Run ``fn``, retrying transient errors; ``what`` (already redacted) is for the logs."""
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except Exception as exc:
                if attempt >= self.attempts or not is_transient_error(exc):
                    raise
                wait = self.delay(attempt)
                logger.warning(
                    "transient error on %s (attempt %d of %d), retrying in %.2fs: %s",
                    what,
                    attempt,
                    self.attempts,
                    wait,
                    redact_uri(f"{type(exc).__name__}: {exc}"),
                )
                self.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover


DEFAULT_RETRY: Final[RetryPolicy] = RetryPolicy()


# ---------------------------------------------------------------------------------------------
# Filesystem helpers
# ---------------------------------------------------------------------------------------------


def _open_fs(uri: str, storage_options: dict[str, Any] | None) -> tuple[Any, str, str]:
    """Return (filesystem, fs path, clean URI) for ``uri``; credentials moved to options."""
    clean, creds = split_uri_credentials(uri)
    options = dict(storage_options or {})
    options.update(creds)
    try:
        fs, path = fsspec.core.url_to_fs(clean, **options)
    except ImportError as exc:
        raise InputError(
            f"cannot open {redact_uri(clean)}: a filesystem package is missing ({exc})",
            redact_uri(clean),
        ) from None
    except (ValueError, TypeError) as exc:
        raise InputError(
            f"cannot open {redact_uri(clean)}: {redact_uri(str(exc))}", redact_uri(clean)
        ) from None
    return fs, path, clean


def _is_local(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocol or "local" in protocol


def _is_s3(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return bool(_S3_PROTOCOLS.intersection(protocol)) and hasattr(fs, "call_s3")


def _base_uri(clean_uri: str, fs: Any, root: str) -> str:
    """The URI prefix that, followed by ``/relative/path``, names entries below ``root``."""
    if _is_local(fs) and not _SCHEME_RE.match(clean_uri):
        return root.rstrip("/") or "/"
    if _is_local(fs) and clean_uri.startswith("file://"):
        return "file://" + (root.rstrip("/") or "/")
    return clean_uri.rstrip("/")


def _join(base: str, relative: str) -> str:
    return base + relative if base.endswith("/") else base + "/" + relative


def _utf8_key(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


# ---------------------------------------------------------------------------------------------
# Folder enumeration
# ---------------------------------------------------------------------------------------------


def _iter_s3_relative(fs: Any, root: str, retry: RetryPolicy, what: str) -> Iterator[str]:
    """Relative paths of image objects under ``root`` (``bucket/prefix``), page by page."""
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
            if any(part.startswith(".") for part in parts) or not has_image_extension(parts[-1]):
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
            yield relative
        if not page.get("IsTruncated"):
            return
        token = page.get("NextContinuationToken")
        if not token:
            raise InputError(f"listing of {what} is truncated without a continuation token", what)


def _sorted_children(
    fs: Any, directory: str, retry: RetryPolicy, what: str
) -> list[tuple[bytes, str, bool]]:
    """(sort key, path, is_dir) of the visible image files and folders in ``directory``."""
    listing = retry.call(lambda: fs.ls(directory, detail=True), what=what)
    with contextlib.suppress(Exception):
        fs.invalidate_cache(directory)
    local = _is_local(fs)
    parent = directory.rstrip("/")
    children: list[tuple[bytes, str, bool]] = []
    for entry in listing:
        name = str(entry["name"]).rstrip("/")
        if not name or name == parent:
            continue
        base = name.rsplit("/", 1)[-1]
        if base.startswith("."):
            continue
        kind = entry.get("type")
        if local and entry.get("islink"):
            if os.path.isdir(name):
                logger.info("not following symlinked folder %s", name)
                continue
            kind = "file" if os.path.isfile(name) else kind
        if kind == "directory":
            children.append((_utf8_key(base + "/"), name, True))
        elif kind == "file" and has_image_extension(base):
            children.append((_utf8_key(base), name, False))
    children.sort()
    return children


def _iter_walk_relative(fs: Any, root: str, retry: RetryPolicy, what: str) -> Iterator[str]:
    """Relative paths of image files under ``root``, depth first, in global byte order."""
    root = root.rstrip("/") or "/"
    prefix_len = len(root) if root == "/" else len(root) + 1
    stack = [iter(_sorted_children(fs, root, retry, what))]
    while stack:
        try:
            _, name, is_dir = next(stack[-1])
        except StopIteration:
            stack.pop()
            continue
        if is_dir:
            stack.append(iter(_sorted_children(fs, name, retry, what)))
        else:
            yield name[prefix_len:]


def _iter_folder(fs: Any, root: str, clean_uri: str, retry: RetryPolicy) -> Iterator[InputRef]:
    what = redact_uri(clean_uri)
    base = _base_uri(clean_uri, fs, root)
    relatives = (
        _iter_s3_relative(fs, root, retry, what)
        if _is_s3(fs)
        else _iter_walk_relative(fs, root, retry, what)
    )
    for relative in relatives:
        yield InputRef(uri=_join(base, relative))


# ---------------------------------------------------------------------------------------------
# Manifests
# ---------------------------------------------------------------------------------------------


class _EntryResolver:
    """Turns raw manifest entries into references, stripping embedded credentials."""

    def __init__(self, manifest_uri: str) -> None:
        self.base_dir = _parent_uri(manifest_uri)
        self.what = redact_uri(manifest_uri)
        self.skipped = 0
        self._warned_credentials = False

    def __call__(self, entry: object) -> InputRef | None:
        if entry is None:
            self.skipped += 1
            return None
        text = str(entry).strip()
        if not text:
            self.skipped += 1
            return None
        clean, userinfo = _split_userinfo(text)
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
        return ref_from_uri(resolve_uri(text, self.base_dir))

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


def _struct_field_columns(column: str, fields: Iterable[str]) -> list[str]:
    """Column selection for struct fields; whole column when the name itself has a dot."""
    if "." in column:
        return [column]
    return [f"{column}.{name}" for name in fields]


def _struct_field(table: pa.Table, name: str) -> pa.Array:
    struct = table.column(0).combine_chunks()
    if isinstance(struct, pa.ChunkedArray):  # pragma: no cover - defensive
        struct = pa.concat_arrays(struct.chunks)
    values = struct.field(name)
    if struct.null_count:
        # A null struct makes its fields null too, whatever the child arrays hold.
        values = pc.if_else(struct.is_valid(), values, pa.scalar(None, values.type))
    return values


def _iter_parquet_images(
    parquet_file: pq.ParquetFile, column: str, parquet_uri: str
) -> Iterator[InputRef]:
    row = 0
    selection = _struct_field_columns(column, ["path"])
    for group in range(parquet_file.metadata.num_row_groups):
        table = parquet_file.read_row_group(group, columns=selection)
        paths = _struct_field(table, "path").to_pylist()
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
# iter_inputs
# ---------------------------------------------------------------------------------------------


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


def _open_parquet(fs: Any, path: str, what: str, retry: RetryPolicy) -> pq.ParquetFile:
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


def iter_inputs(
    uri: str,
    *,
    storage_options: dict[str, Any] | None = None,
    image_column: str | None = None,
    retry: RetryPolicy = DEFAULT_RETRY,
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

    Returns:
        An iterator of :class:`InputRef`; when it yields nothing it raises :class:`InputError`
        (an empty collection) instead of stopping.

    Raises:
        InputError: ``uri`` does not exist, is not a supported kind of input, is malformed, or
            (during iteration) holds no image. Messages carry the redacted URI.
    """
    fs, path, clean = _open_fs(uri, storage_options)
    what = redact_uri(clean)
    try:
        info = retry.call(lambda: fs.info(path), what=what)
    except FileNotFoundError:
        raise InputError(f"input not found: {what}", what) from None
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

    kind = info.get("type")
    if kind == "directory":
        logger.info("enumerating folder %s", what)
        return _ensure_nonempty(_iter_folder(fs, path, clean, retry), what)
    if kind != "file":
        raise InputError(f"input {what} is neither a file nor a folder ({kind})", what)

    base = _base_uri(clean, fs, path)
    extension = _extension(path)
    if extension == _MANIFEST_TEXT:
        logger.info("enumerating text manifest %s", what)
        return _ensure_nonempty(_iter_text_manifest(fs, path, base, retry), what)
    if extension == _MANIFEST_CSV:
        _check_csv_manifest(fs, path, what, retry)
        logger.info("enumerating CSV manifest %s", what)
        return _ensure_nonempty(_iter_csv_manifest(fs, path, base, retry), what)
    if extension == _PARQUET:
        parquet_file = _open_parquet(fs, path, what, retry)
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
        return iter([InputRef(uri=base)])
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
    fs, path, clean = _open_fs(uri, storage_options)
    try:
        is_folder = fs.isdir(path)
    except OSError:  # the listing reports access errors with their context
        return None
    return _base_uri(clean, fs, path) if is_folder else None


# ---------------------------------------------------------------------------------------------
# Reading bytes
# ---------------------------------------------------------------------------------------------


def _read_file(uri: str, storage_options: dict[str, Any] | None, retry: RetryPolicy) -> bytes:
    what = redact_uri(uri)

    def attempt() -> bytes:
        fs, path, _ = _open_fs(uri, storage_options)
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
    fs, path, _ = _open_fs(parquet_uri, storage_options)
    parquet_file = _open_parquet(fs, path, what, retry)
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
        selection = _struct_field_columns(detected, ["bytes", "path"])
        for group, wanted in sorted(located.items()):
            try:
                table = retry.call(
                    lambda g=group: parquet_file.read_row_group(g, columns=selection), what=what
                )
                data = _struct_field(table, "bytes")
                paths = _struct_field(table, "path")
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
                    target = resolve_uri(member, _parent_uri(parquet_uri))
                    results[ref] = _read_file(target, storage_options, retry)
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
        return _read_file(ref.uri, storage_options, retry)
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
            fs, path, _ = _open_fs(ref.uri, storage_options)
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
                    value = _read_file(ref.uri, storage_options, retry)
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
