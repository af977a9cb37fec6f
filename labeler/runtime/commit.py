"""Committing a shard: its Parquet parts and its COCO fragments, written in one order, recorded.

Order: ``annotations.parquet``, the annotation fragment, the image fragment, then
``images.parquet`` (its presence says the shard is whole). Each file's record (sha256, size, rows
and the storage's stamp, :func:`labeler.runtime.integrity.part_record`) goes to the shard's stats,
which the worker writes after this returns.
"""

from __future__ import annotations

from collections.abc import Sequence

from labeler.output import parts
from labeler.output.coco_records import shard_fragments
from labeler.runtime.integrity import part_record, part_stamp
from labeler.runtime.run_folder import RunFolder


def commit_shard(run: RunFolder, shard_id: str, image_rows: Sequence[dict],
                 annotation_rows: Sequence[dict]) -> dict[str, dict]:
    """Write one shard's parts and COCO fragments; returns file name -> its record."""
    images, n_images, annotations, n_annotations = shard_fragments(image_rows, annotation_rows)
    files = [
        (parts.ANNOTATIONS.file_name, parts.encode_part(parts.ANNOTATIONS, annotation_rows),
         len(annotation_rows)),
        (parts.COCO_ANNOTATIONS_FRAGMENT, annotations, n_annotations),
        (parts.COCO_IMAGES_FRAGMENT, images, n_images),
        (parts.IMAGES.file_name, parts.encode_part(parts.IMAGES, image_rows), len(image_rows)),
    ]
    records = {}
    for name, data, count in files:
        run.write_shard_file(shard_id, name, data)
        records[name] = part_record(data, count,
                                    part_stamp(run.output, run.shard_part(shard_id, name)))
    return records
