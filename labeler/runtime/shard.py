"""Processing one shard: read, decode, label in batches, encode, commit the shard's parts.

Bad images become ``failed`` rows with a reason; they never stop the shard. An error that hits
every image of a batch, even one image at a time, is not the data's fault: it propagates so the
driver can retry the shard and, after its attempts, record the shard as failed.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from labeler.io.decode import ImageDecodeError, decode_image
from labeler.io.inputs import InputRef, read_many
from labeler.io.storage import Folder
from labeler.methods.base import MAX_LABELS_PER_IMAGE, ImageLabels
from labeler.output import schema
from labeler.output.rle import encode_label_map
from labeler.runtime.run_folder import RunFolder

logger = logging.getLogger(__name__)


@dataclass
class ShardRows:
    """Rows collected for one shard's ``images.parquet`` and ``annotations.parquet``."""

    images: list[dict] = field(default_factory=list)
    annotations: list[dict] = field(default_factory=list)

    def fail(self, entry: dict, reason: str, detail: str, shard_id: str) -> None:
        self.images.append(
            {
                "uri": entry["uri"],
                "image_id": entry["image_id"],
                "status": schema.IMAGE_STATUS_FAILED,
                "reason": reason,
                "detail": detail[:500],
                "width": None,
                "height": None,
                "n_annotations": 0,
                "shard_id": shard_id,
            }
        )


class ShardProcessor:
    """Applies one loaded segmenter to shards of a run.

    Args:
        segmenter: built once per worker (see :func:`labeler.methods.registry.build_segmenter`).
        batch_size: images per model call.
        max_pixels: decompression-bomb limit passed to the decoder.
        run_id: recorded with every annotation.
        storage_options: fsspec options for reading inputs.
    """

    def __init__(self, segmenter, batch_size: int, max_pixels: int | None, run_id: str,
                 storage_options: dict | None = None) -> None:
        self.segmenter = segmenter
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        self.run_id = run_id
        self.storage_options = storage_options
        self.category_names = {c["id"]: c["name"] for c in segmenter.categories}
        provenance = segmenter.provenance()
        self.provenance = {
            "method": provenance["method"],
            "model": provenance["model"],
            "embedding_set": provenance.get("embedding_set"),
        }

    def process(self, output: Folder, shard_id: str) -> dict:
        """Label one shard and commit its parts and stats. Returns the stats."""
        run = RunFolder(output)
        started = time.perf_counter()
        entries = run.read_manifest(shard_id)
        rows = ShardRows()
        pending: list[tuple[dict, np.ndarray]] = []
        refs = [InputRef.from_dict(entry["ref"]) if "ref" in entry else InputRef(uri=entry["uri"]) for entry in entries]
        by_uri = {id(ref): entry for ref, entry in zip(refs, entries)}
        for ref, data in read_many(refs, storage_options=self.storage_options):
            entry = by_uri[id(ref)]
            if isinstance(data, BaseException):
                rows.fail(entry, "read_error", f"{type(data).__name__}: {data}", shard_id)
                continue
            try:
                decoded = decode_image(data, **({"max_pixels": self.max_pixels} if self.max_pixels else {}))
            except ImageDecodeError as error:
                rows.fail(entry, error.reason, error.detail, shard_id)
                continue
            pending.append((entry, decoded.pixels))
            if len(pending) == self.batch_size:
                self._label_batch(pending, rows, shard_id)
                pending = []
        if pending:
            self._label_batch(pending, rows, shard_id)
        rows.images.sort(key=lambda row: row["image_id"])
        self._commit(run, shard_id, rows)
        stats = {
            "shard_id": shard_id,
            "images": len(rows.images),
            "labeled": sum(r["status"] == schema.IMAGE_STATUS_LABELED for r in rows.images),
            "failed": sum(r["status"] == schema.IMAGE_STATUS_FAILED for r in rows.images),
            "annotations": len(rows.annotations),
            "failure_reasons": _count([r["reason"] for r in rows.images if r["reason"]]),
            "seconds": time.perf_counter() - started,
        }
        run.write_stats(shard_id, stats)
        return stats

    def _label_batch(self, batch: list[tuple[dict, np.ndarray]], rows: ShardRows, shard_id: str) -> None:
        images = [pixels for _, pixels in batch]
        try:
            results = self.segmenter.label(images)
        except Exception as batch_error:  # noqa: BLE001 - isolate the image that breaks the batch
            logger.warning("batch failed (%s); retrying its images one by one", batch_error)
            results = []
            for entry, pixels in batch:
                try:
                    results.append(self.segmenter.label([pixels])[0])
                except Exception as error:  # noqa: BLE001
                    results.append(error)
            if all(isinstance(result, Exception) for result in results):
                raise batch_error
        for (entry, pixels), result in zip(batch, results):
            if isinstance(result, Exception):
                rows.fail(entry, "method_error", f"{type(result).__name__}: {result}", shard_id)
            else:
                self._add_labels(entry, pixels, result, rows, shard_id)

    def _add_labels(self, entry: dict, pixels: np.ndarray, labels: ImageLabels, rows: ShardRows,
                    shard_id: str) -> None:
        height, width = pixels.shape[:2]
        masks = encode_label_map(labels.label_map, len(labels.category_ids))
        count = 0
        for index, (mask, category, score) in enumerate(zip(masks, labels.category_ids, labels.scores)):
            if mask.area == 0:
                continue
            rows.annotations.append(
                {
                    "id": entry["image_id"] * MAX_LABELS_PER_IMAGE + index,
                    "image_id": entry["image_id"],
                    "category_id": int(category),
                    "category_name": self.category_names[int(category)],
                    "segmentation_counts": mask.counts,
                    "segmentation_size": [mask.height, mask.width],
                    "area": mask.area,
                    "bbox": mask.bbox,
                    "iscrowd": 0,
                    "score": float(score),
                    "file_name": entry["uri"],
                    "run_id": self.run_id,
                    **self.provenance,
                }
            )
            count += 1
        rows.images.append(
            {
                "uri": entry["uri"],
                "image_id": entry["image_id"],
                "status": schema.IMAGE_STATUS_LABELED,
                "reason": None,
                "detail": None,
                "width": width,
                "height": height,
                "n_annotations": count,
                "shard_id": shard_id,
            }
        )

    def _commit(self, run: RunFolder, shard_id: str, rows: ShardRows) -> None:
        for name, table_schema, table_rows in (
            ("annotations.parquet", schema.ANNOTATIONS, rows.annotations),
            ("images.parquet", schema.IMAGES, rows.images),
        ):
            buffer = io.BytesIO()
            pq.write_table(pa.Table.from_pylist(table_rows, schema=table_schema), buffer)
            run.output.write_bytes(run.shard_part(shard_id, name), buffer.getvalue())


def _count(values: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts
