"""Merging per-shard parts into ``images.parquet``, ``annotations/`` and the configured exports.

Steps: check that every shard of the plan has committed its parts, concatenate the image parts
into ``images.parquet``, copy each annotation part to ``annotations/`` (plan order in the name),
record the categories and COCO info (``run/output.json``), then stream ``coco.json`` from the
shard parts (:mod:`labeler.output.coco_json`) and the dataset card ``README.md``
(:mod:`labeler.output.card`: ``datasets.load_dataset(OUTPUT)`` loads the tables). Other formats are written from a finished output
by ``labeler export`` (:mod:`labeler.output.exporters`). Everything streams shard by shard,
so memory stays bounded by one shard's annotations whatever the collection size.
"""

from __future__ import annotations

import logging
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq

from labeler.io.folders import Folder
from labeler.output import parts, schema
from labeler.output.card import write_dataset_card
from labeler.output.coco_json import coco_annotation, write_coco_json
from labeler.output.reader import OutputReader, OutputReadError, write_meta

#: ``coco_annotation`` is part of this module's interface (the exporters' source uses it).
__all__ = ["coco_annotation", "merge_outputs"]

logger = logging.getLogger(__name__)


def merge_outputs(output: Folder, shard_ids: list[str], categories: list[dict], info: dict) -> dict:
    """Write the final outputs from the committed shard parts, in plan order.

    Args:
        output: the job's output folder.
        shard_ids: the plan's shards, in collection order; every one must be committed.
        categories: the COCO categories.
        info: the COCO ``info`` block (method, model, run id...).

    Returns:
        counts: ``images``, ``labeled``, ``failed``, ``annotations``, and ``failure_reasons``
        (failed images per reason).

    Raises:
        OutputReadError: a shard of the plan has not committed its parts.
    """
    _check_committed(output, shard_ids)
    counts = _merge_images(output, shard_ids)
    counts["annotations"] = _merge_annotation_parts(output, shard_ids)
    write_meta(output, categories, info)
    write_coco_json(OutputReader.of_shards(output, shard_ids, categories, info), output)
    write_dataset_card(output, categories, info, counts)
    return counts


def _check_committed(output: Folder, shard_ids: list[str]) -> None:
    for shard_id in shard_ids:
        for kind in parts.KINDS:
            if not output.exists(parts.shard_part(shard_id, kind)):
                raise OutputReadError(
                    f"shard {shard_id} has no committed {kind.file_name} in {output.uri}"
                )


def _merge_images(output: Folder, shard_ids: list[str]) -> dict:
    images = labeled = failed = 0
    reasons: Counter = Counter()
    with (output.open_atomic_writer(parts.MERGED_IMAGES) as handle,
          pq.ParquetWriter(handle, schema.IMAGES) as writer):
        for shard_id in shard_ids:
            table = parts.read_part(output, parts.shard_part(shard_id, parts.IMAGES), parts.IMAGES)
            writer.write_table(table)
            statuses = table.column("status").to_pylist()
            images += len(statuses)
            labeled += statuses.count(schema.IMAGE_STATUS_LABELED)
            failed += statuses.count(schema.IMAGE_STATUS_FAILED)
            reasons.update(reason for reason in table.column("reason").to_pylist() if reason)
    return {"images": images, "labeled": labeled, "failed": failed, "annotations": 0,
            "failure_reasons": dict(reasons)}


def _merge_annotation_parts(output: Folder, shard_ids: list[str]) -> int:
    """Copy each shard's annotation part to ``annotations/``; returns the number of rows."""
    wanted = {path.rsplit("/", 1)[1]: (shard_id, path)
              for shard_id, path in parts.merged_annotation_parts(shard_ids).items()}
    for stale in set(output.list(parts.MERGED_ANNOTATIONS_DIR)) - set(wanted):
        output.remove(f"{parts.MERGED_ANNOTATIONS_DIR}/{stale}")
    rows = 0
    for shard_id, path in wanted.values():
        data = output.read_bytes(parts.shard_part(shard_id, parts.ANNOTATIONS))
        output.write_bytes(path, data)
        rows += pq.ParquetFile(pa.BufferReader(data)).metadata.num_rows
    return rows

