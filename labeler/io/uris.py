"""URIs: credentials embedded in them, redaction for messages, resolution and joining.

Every URI that reaches a message or a log line goes through :func:`redact_uri`. Credentials
embedded in a URI (``s3://KEY:SECRET@bucket/...``; ``s3://anonymous@bucket``) are moved into the
fsspec storage options by :func:`split_uri_credentials`, and :func:`open_fs` does that on every
open, so a clean URI plus its options is what the rest of ``labeler.io`` passes around.
"""

from __future__ import annotations

import os
import posixpath
import re
from typing import Any, Final

import fsspec

from labeler.errors import UserError

__all__ = [
    "InputError",
    "base_uri",
    "join_uri",
    "open_fs",
    "parent_uri",
    "redact_text",
    "redact_uri",
    "refuse_uri_credentials",
    "resolve_uri",
    "split_uri_credentials",
    "split_userinfo",
    "uri_basename",
    "uri_stem",
]

S3_PROTOCOLS: Final[frozenset[str]] = frozenset({"s3", "s3a"})
# Protocols whose paths start at one root, with no bucket or host in the URI.
_ROOTED_PROTOCOLS: Final[frozenset[str]] = frozenset({"file", "local", "memory"})
SCHEME_RE: Final[re.Pattern[str]] = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
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


class InputError(UserError):
    """The input collection cannot be enumerated (missing, empty, unreadable, malformed).

    ``uri`` holds the redacted URI the message is about.
    """

    def __init__(self, message: str, uri: str = "") -> None:
        super().__init__(message, uri)
        self.message = message
        self.uri = uri

    def __str__(self) -> str:
        return self.message


def _split_authority(uri: str) -> tuple[str, str, str] | None:
    """``scheme://`` + authority + the rest, or None for a URI without a scheme.

    The authority ends at the first '/', '?' or '#'; its userinfo is everything before its last '@'.
    """
    match = SCHEME_RE.match(uri)
    if not match:
        return None
    head = match.group(0)
    rest = uri[len(head) :]
    end = min([pos for pos in (rest.find(sep) for sep in "/?#") if pos != -1], default=len(rest))
    return head, rest[:end], rest[end:]


def _redact_one(uri: str) -> str:
    parts_of_uri = _split_authority(uri)
    if parts_of_uri is None:
        return uri
    head, authority, tail = parts_of_uri
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


_USERINFO_IN_TEXT: Final[re.Pattern[str]] = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://)[^/\s?#@'\"]+@")
_SECRET_QUERY_IN_TEXT: Final[re.Pattern[str]] = re.compile(
    r"([?&][^=&\s]*(?:" + "|".join(_SENSITIVE_QUERY_KEYS) + r")[^=&\s]*=)[^&\s#'\"]+",
    re.IGNORECASE,
)


def redact_text(text: str) -> str:
    """``text`` (a message, a traceback) with the credentials of every URL in it replaced by
    ``***``: userinfo (``s3://KEY:SECRET@b`` -> ``s3://***@b``) and secret-looking query values."""
    text = _USERINFO_IN_TEXT.sub(lambda m: m.group(1) + _REDACTED + "@", str(text))
    return _SECRET_QUERY_IN_TEXT.sub(lambda m: m.group(1) + _REDACTED, text)


def split_userinfo(uri: str) -> tuple[str, str | None]:
    """Split ``scheme://userinfo@rest`` into (``scheme://rest``, userinfo)."""
    parts_of_uri = _split_authority(uri)
    if parts_of_uri is None or "@" not in parts_of_uri[1]:
        return uri, None
    head, authority, tail = parts_of_uri
    userinfo, host = authority.rsplit("@", 1)
    return head + host + tail, userinfo


def refuse_uri_credentials(value: str, what: str) -> None:
    """Refuse a URI with credentials in it (``s3://KEY:SECRET@bucket/...``).

    A job's URIs travel to its workers and into ``run/config.json``; credentials must travel
    another way. The message shows the URI redacted.

    Raises:
        InputError: ``value`` (or a URL of its ``::`` chain) has a userinfo part.
    """
    for part in value.split("::"):
        if split_userinfo(part.strip())[1] is not None:
            raise InputError(
                f"{what}: credentials in a URI are refused ({redact_uri(value)}); give them by "
                "the environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
                "GOOGLE_APPLICATION_CREDENTIALS) or the storage options",
                redact_uri(value),
            )


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
    clean, userinfo = split_userinfo(uri)
    if userinfo is None:
        return uri, {}
    protocol = uri.split("://", 1)[0].lower()
    if protocol in S3_PROTOCOLS:
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
    if SCHEME_RE.match(entry) or "::" in entry:
        return entry
    match = SCHEME_RE.match(base_dir)
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


def parent_uri(uri: str) -> str:
    """The folder holding ``uri`` (``s3://bucket`` is its own parent)."""
    stripped = uri.rstrip("/")
    if "/" not in stripped:
        return stripped
    parent = stripped.rsplit("/", 1)[0]
    if parent.endswith(":/"):  # "s3://bucket" has no parent below the scheme
        return stripped
    return parent


def relative_path_hint(uri: str) -> str:
    """For a message about a path that was not found: where a relative local path was looked up.

    One rule for flags and job files alike: a relative path resolves against the current folder
    (not the job file's folder). Returns ``" (relative paths resolve against the current folder,
    /home/me)"`` for a relative local path, else ``""``.
    """
    if SCHEME_RE.match(uri) or os.path.isabs(os.path.expanduser(uri)):
        return ""
    return f" (relative paths resolve against the current folder, {os.getcwd()})"


def open_fs(uri: str, storage_options: dict[str, Any] | None) -> tuple[Any, str, str]:
    """Return (filesystem, fs path, clean URI) for ``uri``; credentials moved to options.

    Raises:
        InputError: the protocol's package is missing or the URI/options are malformed.
    """
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


def is_local_fs(fs: Any) -> bool:
    """Whether ``fs`` is the local filesystem."""
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocol or "local" in protocol


def base_uri(clean_uri: str, fs: Any, root: str) -> str:
    """The URI prefix that, followed by ``/relative/path``, names entries below ``root``."""
    if is_local_fs(fs) and not SCHEME_RE.match(clean_uri):
        return root.rstrip("/") or "/"
    if is_local_fs(fs) and clean_uri.startswith("file://"):
        return "file://" + (root.rstrip("/") or "/")
    return clean_uri.rstrip("/")


def join_relative(base: str, relative: str) -> str:
    """``base`` (from :func:`base_uri`) followed by a path relative to it."""
    return base + relative if base.endswith("/") else base + "/" + relative


def join_uri(base: str, *parts: str) -> str:
    """Join path parts onto a local path or URI with ``/`` (the scheme is left alone)."""
    out = base.rstrip("/")
    for part in parts:
        out = out + "/" + part.strip("/")
    return out


def uri_basename(uri: str) -> str:
    """Last path component of a path or URI (query strings are not stripped)."""
    return posixpath.basename(uri.rstrip("/"))


def uri_stem(uri: str) -> str:
    """File name of ``uri`` without its last extension."""
    name = uri_basename(uri)
    root, _ = posixpath.splitext(name)
    return root or name
