"""Image names for the outputs: where consumers find each image relative to an image root.

COCO ``file_name`` (and the ``file_name`` of ``images.parquet`` and ``annotations/``) is:

* for a folder input, the image's path relative to the input folder, sub-folders kept
  (``cats/a.jpg``); consumers pass the input folder as their image directory. Names are unique
  because paths are.
* for manifests and Parquet files of image bytes (no common folder), a stable name made of the
  image id and the source file's base name, ``00000042_a.jpg`` (``00000042`` alone when a
  Parquet row has no path). Unique because image ids are; stable because image ids are stable.

The source URI is always kept beside the name (``uri`` in ``images.parquet``, ``coco_url`` in
``coco.json``).
"""

from __future__ import annotations

import posixpath
import re

from labeler.io.inputs import parse_parquet_row_uri

#: Characters kept in a base name taken from a manifest entry; others become ``_``.
_UNSAFE = re.compile(r"[^A-Za-z0-9._\-]+")


class ImageNamer:
    """Names images of one collection.

    Args:
        root: the folder input's URI prefix (:func:`labeler.io.inputs.folder_root`), or ``None``
            for manifests and Parquet files.
    """

    def __init__(self, root: str | None) -> None:
        self.root = root
        self._prefix = None if root is None else (root if root.endswith("/") else root + "/")

    def __call__(self, uri: str, image_id: int) -> str:
        """The ``file_name`` of the image ``uri`` with id ``image_id``."""
        if self._prefix is not None and uri.startswith(self._prefix):
            return uri[len(self._prefix):]
        return stable_name(uri, image_id)


def stable_name(uri: str, image_id: int) -> str:
    """``<image_id:08d>_<base name>``, the base name reduced to safe characters."""
    parsed = parse_parquet_row_uri(uri)
    source = (parsed[2] or "") if parsed is not None else uri.split("?", 1)[0]
    base = _UNSAFE.sub("_", posixpath.basename(source.rstrip("/"))).strip("._")
    return f"{image_id:08d}_{base}" if base else f"{image_id:08d}"
