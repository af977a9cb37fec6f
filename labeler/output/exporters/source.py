"""Streaming read of a finished output: (image, annotations) in collection order.

Rows come from :class:`labeler.output.reader.OutputReader` (``images.parquet`` batch by batch,
``annotations/`` one shard's part at a time), so memory is bounded by one shard whatever the
collection size.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

from labeler.errors import UserError
from labeler.io.folders import Folder
from labeler.output import parts
from labeler.output.coco_files import COCO_INDEX, coco_files
from labeler.output.coco_records import coco_annotation
from labeler.output.reader import OutputReader


@dataclass(frozen=True)
class ExportImage:
    """One labeled image of the output.

    Attributes:
        image_id: the output's stable image id.
        file_name: its name relative to the image root (:mod:`labeler.output.names`).
        uri: the source URI.
        width, height: original size in pixels.
        split: ``train`` or ``val`` (``--val-fraction``).
        original_name: the name relative to the image root when ``file_name`` is the short one
            the export uses instead (:mod:`.long_names`); ``None``: not shortened.
    """

    image_id: int
    file_name: str
    uri: str
    width: int
    height: int
    split: str = "train"
    original_name: str | None = None


class OutputSource:
    """A finished ``labeler run`` output, read for export.

    Args:
        uri: the output folder (any fsspec URI).
        storage_options: fsspec options for it.

    Raises:
        ValueError: the folder is not a finished output (no ``images.parquet`` or ``coco.json``).
    """

    def __init__(self, uri: str, storage_options: dict | None = None) -> None:
        self.folder = Folder(uri, storage_options)
        for required in ("images.parquet", "run/config.json"):
            if not self.folder.exists(required):
                raise UserError(f"{uri} is not a finished labeler output (no {required})")
        if coco_files(self.folder, parts.COCO_JSON) is None:
            raise UserError(f"{uri} is not a finished labeler output (no {parts.COCO_JSON} "
                             f"or {COCO_INDEX})")
        self.config = self.folder.read_json("run/config.json")
        self.categories = self._categories()

    @property
    def image_root(self) -> str | None:
        """The folder input's URI (``None`` for manifest and Parquet inputs)."""
        return self.config.get("image_root")

    @property
    def method(self) -> str:
        return self.config["settings"].get("method", "")

    def _categories(self) -> list[dict]:
        if self.folder.exists(parts.OUTPUT_META):  # written by every merge
            return self.folder.read_json(parts.OUTPUT_META)["categories"]
        if self.folder.exists("run/categories.json"):
            return self.folder.read_json("run/categories.json")
        with self.folder.open("coco.json") as handle:  # older outputs: the tail of coco.json
            text = handle.read().decode("utf-8")
        return json.loads(text)["categories"]

    def __iter__(self) -> Iterator[tuple[ExportImage, list[dict]]]:
        """Each labeled image with its COCO annotations (RLE), in image id order."""
        for image in OutputReader.open(self.folder).images():
            if not image.is_labeled:
                continue
            row = image.row
            yield (
                ExportImage(image_id=image.image_id, file_name=row["file_name"] or row["uri"],
                            uri=row["uri"], width=row["width"], height=row["height"]),
                [coco_annotation(annotation) for annotation in image.annotations],
            )
