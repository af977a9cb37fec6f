"""References to input images: :class:`InputRef` and the URIs of rows of Parquet image files.

``InputRef.uri`` is the string written as COCO ``file_name`` and ``images.parquet`` ``uri``. For
files it is the file's URI in the form of the input (plain absolute path for a local input without
a protocol, else ``protocol://...``). For a row of a Parquet image file it is::

    <parquet-uri>#row=<i>               (the struct's path is null or empty)
    <parquet-uri>#row=<i>&path=<path>   (the struct's path, verbatim, not encoded)

with ``i`` the 0-based row index in the file. :func:`parse_parquet_row_uri` and
:func:`ref_from_uri` invert it; a manifest entry of that form designates that row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = ["InputRef", "parquet_row_uri", "parse_parquet_row_uri", "ref_from_uri"]

_ROW_FRAGMENT_RE: Final[re.Pattern[str]] = re.compile(r"#row=(\d+)(?:&path=(.*))?\Z", re.DOTALL)


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
        read_uri: the URI to read when it differs from ``uri``: a manifest entry whose query
            holds secret values (a pre-signed URL's signature, a token) has them redacted in
            ``uri``, and only here in full. Held in memory only: never in :meth:`to_dict`, in
            ``repr``, or in comparisons.
        identity: what the listing says of the version listed (an ETag, a file's mtime and
            size: :mod:`labeler.io.identity`), when it says it for free; None otherwise. Not
            in :meth:`to_dict` (the plan keeps it beside the ref) nor in comparisons.
    """

    uri: str
    parquet: str | None = None
    column: str | None = None
    row: int | None = None
    row_group: int | None = None
    index_in_group: int | None = None
    path: str | None = None
    read_uri: str | None = field(default=None, repr=False, compare=False)
    identity: str | None = field(default=None, compare=False)

    @property
    def location(self) -> str:
        """What to read: ``read_uri`` when there is one, else ``uri``."""
        return self.read_uri or self.uri

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
