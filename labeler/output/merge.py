"""Merging per-shard parts into ``coco.json``, ``annotations/`` and ``images.parquet``.

Everything streams shard by shard, so memory stays bounded by one shard's annotations whatever the
collection size. ``coco.json`` is written through an atomic writer: readers never see half a file.
"""

from __future__ import annotations

import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq

from labeler.io.folders import Folder
from labeler.output import schema

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
    """
    counts = {"images": 0, "labeled": 0, "failed": 0, "annotations": 0, "failure_reasons": {}}
    _merge_images(output, shard_ids, counts)
    _merge_annotation_parts(output, shard_ids)
    _write_coco(output, shard_ids, categories, info, counts)
    return counts


def _part(shard_id: str, name: str) -> str:
    return f"run/shards/{shard_id}/{name}"


def _merge_images(output: Folder, shard_ids: list[str], counts: dict) -> None:
    with (output.open_atomic_writer("images.parquet") as handle,
          pq.ParquetWriter(handle, schema.IMAGES) as writer):
        for shard_id in shard_ids:
            table = _read(output, _part(shard_id, "images.parquet"), schema.IMAGES)
            writer.write_table(table)
            statuses = table.column("status").to_pylist()
            counts["images"] += len(statuses)
            counts["labeled"] += statuses.count(schema.IMAGE_STATUS_LABELED)
            counts["failed"] += statuses.count(schema.IMAGE_STATUS_FAILED)
            for reason in table.column("reason").to_pylist():
                if reason:
                    reasons = counts["failure_reasons"]
                    reasons[reason] = reasons.get(reason, 0) + 1


def _merge_annotation_parts(output: Folder, shard_ids: list[str]) -> None:
    """``annotations/part-NNNNNN-<shard>.parquet``: one file per shard, plan order in the name."""
    wanted = {
        f"part-{index:06d}-{shard_id}.parquet": shard_id for index, shard_id in enumerate(shard_ids)
    }
    for stale in set(output.list("annotations")) - set(wanted):
        output.remove(f"annotations/{stale}")
    for name, shard_id in wanted.items():
        output.write_bytes(
            f"annotations/{name}", output.read_bytes(_part(shard_id, "annotations.parquet"))
        )


def _write_coco(output: Folder, shard_ids, categories, info, counts) -> None:
    with output.open_atomic_writer("coco.json") as raw:
        write = lambda text: raw.write(text.encode("utf-8"))
        write('{"info": ' + json.dumps(info, sort_keys=True) + ',\n"images": [')
        first = True
        for shard_id in shard_ids:
            images = _read(output, _part(shard_id, "images.parquet"), schema.IMAGES)
            for row in images.to_pylist():
                if row["status"] != schema.IMAGE_STATUS_LABELED:
                    continue
                record = {
                    "id": row["image_id"],
                    "file_name": row["file_name"] or row["uri"],
                    "coco_url": row["uri"],
                    "width": row["width"],
                    "height": row["height"],
                }
                write(("\n" if first else ",\n") + json.dumps(record, ensure_ascii=False))
                first = False
        write('],\n"annotations": [')
        first = True
        for shard_id in shard_ids:
            table = _read(output, _part(shard_id, "annotations.parquet"), schema.ANNOTATIONS)
            for batch in table.to_batches(max_chunksize=4096):
                for row in batch.to_pylist():
                    write(("\n" if first else ",\n") + json.dumps(coco_annotation(row)))
                    first = False
                    counts["annotations"] += 1
        write('],\n"categories": ' + json.dumps(categories) + "}\n")


def coco_annotation(row: dict) -> dict:
    """A COCO annotation record from one ``annotations/`` row."""
    return {
        "id": row["id"],
        "image_id": row["image_id"],
        "category_id": row["category_id"],
        "segmentation": {
            "size": list(row["segmentation_size"]),
            "counts": row["segmentation_counts"],
        },
        "area": row["area"],
        "bbox": list(row["bbox"]),
        "iscrowd": row["iscrowd"],
        "score": row["score"],
    }


def _read(output: Folder, relative: str, table_schema: pa.Schema) -> pa.Table:
    with output.open(relative) as handle:
        return pq.read_table(handle, schema=table_schema)
