"""The toy method's resource: a text file naming its two categories, one per line."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from labeler.errors import UserError
from labeler.io.reading import read_file
from labeler.io.uris import redact_uri

DEFAULT_NAMES = ("dark", "bright")


@dataclass(frozen=True)
class CategoryNames:
    """The two names and the digest of the file they came from (None: the defaults)."""

    names: tuple[str, str]
    digest: str | None

    def categories(self) -> list[dict]:
        """COCO categories, ids 1 (below the threshold) and 2 (at or above it)."""
        return [{"id": index, "name": name, "supercategory": "toy"}
                for index, name in enumerate(self.names, start=1)]


def category_names(uri: str | None) -> CategoryNames:
    """Read the names file at ``uri`` (through labeler's storage layer).

    Raises:
        UserError: it does not exist, or does not hold two distinct non-empty lines.
    """
    if uri is None:
        return CategoryNames(DEFAULT_NAMES, None)
    try:
        data = read_file(uri)
    except FileNotFoundError:
        raise UserError(f"[toy] names: {redact_uri(uri)} does not exist") from None
    lines = tuple(line.strip() for line in data.decode("utf-8", "replace").splitlines() if line.strip())
    if len(lines) != 2 or lines[0] == lines[1]:
        raise UserError(f"[toy] names: {redact_uri(uri)} must name two categories, one per line "
                        f"(found {len(lines)} lines)")
    return CategoryNames((lines[0], lines[1]), hashlib.sha256(data).hexdigest()[:16])
