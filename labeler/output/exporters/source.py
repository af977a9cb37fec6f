"""Streaming read of a finished output: (image, annotations) in collection order.

``images.parquet`` is read batch by batch and ``annotations/`` one part (one shard) at a time,
joined on ``image_id`` (both are in plan order), so memory is bounded by one shard whatever the
collection size.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq
from pycocotools import mask as mask_utils

from labeler.io.storage import Folder
from labeler.output import schema
from labeler.output.merge import coco_annotation


@dataclass(frozen=True)
class ExportImage:
    """One labeled image of the output.

    Attributes:
        image_id: the output's stable image id.
        file_name: its name relative to the image root (:mod:`labeler.output.names`).
        uri: the source URI.
        width, height: original size in pixels.
    """

    image_id: int
    file_name: str
    uri: str
    width: int
    height: int


def decode_mask(annotation: dict) -> np.ndarray:
    """The (H, W) uint8 0/1 mask of a COCO annotation with compressed RLE."""
    segmentation = annotation["segmentation"]
    rle = {"size": segmentation["size"], "counts": segmentation["counts"].encode("ascii")}
    return mask_utils.decode(rle)


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
        for required in ("images.parquet", "coco.json", "run/config.json"):
            if not self.folder.exists(required):
                raise ValueError(f"{uri} is not a finished labeler output (no {required})")
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
        if self.folder.exists("run/categories.json"):
            return self.folder.read_json("run/categories.json")
        with self.folder.open("coco.json") as handle:  # older outputs: the tail of coco.json
            text = handle.read().decode("utf-8")
        return json.loads(text)["categories"]

    def __iter__(self) -> Iterator[tuple[ExportImage, list[dict]]]:
        """Each labeled image with its COCO annotations (RLE), in image id order."""
        annotations = self._iter_annotations()
        pending = next(annotations, None)
        with self.folder.open("images.parquet") as handle:
            for batch in pq.ParquetFile(handle).iter_batches(batch_size=4096):
                for row in batch.to_pylist():
                    image_id = row["image_id"]
                    mine: list[dict] = []
                    while pending is not None and pending["image_id"] <= image_id:
                        if pending["image_id"] == image_id:
                            mine.append(pending)
                        pending = next(annotations, None)
                    if row["status"] != schema.IMAGE_STATUS_LABELED:
                        continue
                    image = ExportImage(
                        image_id=image_id,
                        file_name=row.get("file_name") or row["uri"],
                        uri=row["uri"],
                        width=row["width"],
                        height=row["height"],
                    )
                    yield image, mine

    def _iter_annotations(self) -> Iterator[dict]:
        for name in self.folder.list("annotations"):
            if not name.endswith(".parquet"):
                continue
            with self.folder.open(f"annotations/{name}") as handle:
                table = pq.read_table(handle, schema=schema.ANNOTATIONS)
            for batch in table.to_batches(max_chunksize=4096):
                for row in batch.to_pylist():
                    yield coco_annotation(row)
