"""Which URIs a job's workers may read: the input policy (``--allow-protocols``).

A manifest can name any URI, so without a policy a collection file could point the workers at
any ``http://`` host or at any local file of the machine. :class:`InputPolicy` decides per image,
before it is read:

* **Protocols.** By default only the input's own protocol (``s3`` for an ``s3://`` manifest,
  ``file`` for a local one; ``s3a`` counts as ``s3``, ``gcs`` as ``gs``). ``--allow-protocols``
  replaces that list (e.g. ``s3,https``). ``http``/``https`` are therefore never read unless the
  input itself is on http(s) or they are listed. Every part of a chained URL
  (``simplecache::s3://...``) must be allowed. Refused: reason ``protocol_not_allowed``.
* **Local files.** A local input allows local files under its own folder only (the manifest's
  folder; the folder itself for a folder input), compared after resolving ``..`` and symbolic
  links. Listing ``file`` in ``--allow-protocols`` allows any local path. Refused: reason
  ``outside_input``.

A refused image is a failed image with that reason, never a crash of the shard.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from labeler.io.refs import InputRef
from labeler.io.uris import SCHEME_RE

__all__ = ["OUTSIDE_INPUT", "PROTOCOL_NOT_ALLOWED", "InputPolicy", "protocol_of"]

PROTOCOL_NOT_ALLOWED: Final[str] = "protocol_not_allowed"
OUTSIDE_INPUT: Final[str] = "outside_input"

_ALIASES: Final[dict[str, str]] = {"s3a": "s3", "gcs": "gs", "local": "file", "abfss": "abfs"}
_LOCAL: Final[str] = "file"


def protocol_of(uri: str) -> str:
    """The protocol of a single (unchained) URI, normalised; ``file`` for a plain path."""
    match = SCHEME_RE.match(uri)
    if not match:
        return _LOCAL
    protocol = match.group(1).lower()
    return _ALIASES.get(protocol, protocol)


def _local_path(uri: str) -> str:
    path = uri[len("file://"):] if uri.lower().startswith("file://") else uri
    return os.path.realpath(os.path.expanduser(path))


@dataclass(frozen=True)
class InputPolicy:
    """The protocols and the local root the workers may read.

    Attributes:
        protocols: normalised protocol names allowed.
        local_root: a resolved local folder local files must be under; None: any local path
            (when ``file`` is allowed at all).
    """

    protocols: frozenset[str]
    local_root: str | None = None

    @classmethod
    def for_input(cls, input_uri: str, allow: Iterable[str] | None = None) -> InputPolicy:
        """The policy of a job reading ``input_uri``, with ``--allow-protocols`` ``allow``."""
        if allow is not None:
            protocols = frozenset(_ALIASES.get(p.strip().lower(), p.strip().lower()) for p in allow)
            return cls(protocols=protocols)
        own = input_uri.split("::")[-1]
        protocol = protocol_of(own)
        root = None
        if protocol == _LOCAL:
            path = _local_path(own)
            root = path if os.path.isdir(path) else os.path.dirname(path)
        return cls(protocols=frozenset({protocol}), local_root=root)

    def refusal(self, ref: InputRef) -> tuple[str, str] | None:
        """``(reason, detail)`` when ``ref`` may not be read; None when it may."""
        uri = ref.parquet or ref.uri
        for part in uri.split("::"):
            protocol = protocol_of(part)
            if protocol not in self.protocols:
                allowed = ", ".join(sorted(self.protocols))
                return PROTOCOL_NOT_ALLOWED, (
                    f"{protocol}:// is not allowed for this input (allowed: {allowed}; "
                    "see --allow-protocols)")
        if self.local_root is not None and protocol_of(uri.split("::")[-1]) == _LOCAL:
            path = _local_path(uri.split("::")[-1])
            if os.path.commonpath([path, self.local_root]) != self.local_root:
                return OUTSIDE_INPUT, (
                    f"a local file outside the input's folder {self.local_root} (list file in "
                    "--allow-protocols to allow any local path)")
        return None
