"""Merging per-shard parts into ``images.parquet``, ``annotations/`` and the run's COCO files.

Steps: check that every shard of the plan has committed its parts, concatenate the image parts
into ``images.parquet``, copy each annotation part to ``annotations/`` (plan order in the name;
the storage copies it, the driver reads none of it), record the categories and COCO info
(``run/output.json``), then write the COCO files through the COCO exporter
(:class:`~labeler.output.exporters.coco.RunCocoExporter`) from the fragments the workers
rendered at commit: byte concatenations, no record is parsed or rendered here (shards committed
before fragments existed are rendered now). Above ``max_annotations`` the COCO output is split
(:mod:`labeler.output.coco_files`). Then the dataset card ``README.md``
(:mod:`labeler.output.card`: ``datasets.load_dataset(OUTPUT)`` loads the tables). Memory stays
bounded by one row group of ``images.parquet`` (:data:`IMAGE_ROW_GROUP` rows), whatever the
number of shards; no image row becomes a Python object (Arrow counts the statuses, reasons and
annotations).
"""

from __future__ import annotations

import logging
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from labeler.io.folders import Folder
from labeler.output import parts, schema
from labeler.output.card import write_dataset_card
from labeler.output.coco_files import DEFAULT_MAX_ANNOTATIONS, Fragment
from labeler.output.coco_records import shard_fragments
from labeler.output.exporters.base import ExportContext, ExportOptions
from labeler.output.exporters.coco import RunCocoExporter
from labeler.output.reader import OutputReadError, write_meta

logger = logging.getLogger(__name__)
#: Rows per row group of ``images.parquet`` (at least: whole shards are grouped). One group per
#: shard would make its footer grow with the shards (390k groups at 100M images).
IMAGE_ROW_GROUP = 65536
#: Shards' image tables held before they are copied into one (see :class:`_RowGroups`).
COMPACT_TABLES = 256
#: Where fragments of shards committed without them are rendered during a merge.
_LEGACY_FRAGMENTS = "run/merge"


def merge_outputs(output: Folder, shard_ids: list[str], categories: list[dict], info: dict,
                  max_annotations: int = DEFAULT_MAX_ANNOTATIONS) -> dict:
    """Write the final outputs from the committed shard parts, in plan order.

    Args:
        output: the job's output folder.
        shard_ids: the plan's shards, in collection order; every one must be committed.
        categories: the COCO categories.
        info: the COCO ``info`` block (method, model, run id...).
        max_annotations: the most annotations one COCO file holds.

    Returns:
        counts: ``images``, ``labeled``, ``failed``, ``annotations``, and ``failure_reasons``
        (failed images per reason).

    Raises:
        OutputReadError: a shard of the plan has not committed its parts.
    """
    _check_committed(output, shard_ids)
    counts, per_shard = _merge_images(output, shard_ids)
    _copy_annotation_parts(output, shard_ids)
    counts["annotations"] = sum(annotations for _, annotations in per_shard)
    write_meta(output, categories, info)
    context = ExportContext(output, categories, info, None, 0.0,
                            options=ExportOptions(coco_max_annotations=max_annotations))
    with RunCocoExporter(context) as coco:
        for position, (shard_id, (labeled, annotations)) in enumerate(zip(shard_ids, per_shard,
                                                                         strict=True)):
            coco.add_fragment(_fragment(output, shard_id, position, labeled, annotations))
    write_dataset_card(output, categories, info, counts)
    return counts


def _check_committed(output: Folder, shard_ids: list[str]) -> None:
    for shard_id in shard_ids:
        for kind in parts.KINDS:
            if not output.exists(parts.shard_part(shard_id, kind)):
                raise OutputReadError(
                    f"shard {shard_id} has no committed {kind.file_name} in {output.uri}"
                )


def _merge_images(output: Folder, shard_ids: list[str]) -> tuple[dict, list[tuple[int, int]]]:
    """Concatenate the image parts, streaming (:class:`_RowGroups` bounds what is held);
    returns the counts and each shard's (labeled, annotations), counted by Arrow."""
    images = labeled = failed = 0
    reasons: Counter = Counter()
    per_shard = []
    with (output.open_atomic_writer(parts.MERGED_IMAGES) as handle,
          pq.ParquetWriter(handle, schema.IMAGES) as writer):
        groups = _RowGroups(writer)
        for shard_id in shard_ids:
            table = parts.read_part(output, parts.shard_part(shard_id, parts.IMAGES), parts.IMAGES)
            groups.add(table)
            status = table.column("status")
            shard_labeled = _count(pc.equal(status, schema.IMAGE_STATUS_LABELED))
            per_shard.append((shard_labeled, _count(table.column("n_annotations"))))
            images += table.num_rows
            labeled += shard_labeled
            failed += _count(pc.equal(status, schema.IMAGE_STATUS_FAILED))
            if table.column("reason").null_count < table.num_rows:
                reasons.update({item["values"]: item["counts"] for item in
                                pc.value_counts(pc.drop_null(table.column("reason"))).to_pylist()})
        groups.flush()
    return ({"images": images, "labeled": labeled, "failed": failed, "annotations": 0,
             "failure_reasons": dict(reasons)}, per_shard)


def _count(values: pa.ChunkedArray) -> int:
    """The sum of an integer or boolean column (0 when empty)."""
    return int(pc.sum(values).as_py() or 0)


class _RowGroups:
    """Cuts a stream of small tables (one per shard) into row groups of at least
    :data:`IMAGE_ROW_GROUP` rows; memory stays bounded by one row group.

    Every :data:`COMPACT_TABLES` tables are copied into one contiguous table: each table read
    from a part holds buffers of its own, and thousands of tiny shards' tables (kept until their
    row group is full) would hold far more memory than their rows.
    """

    def __init__(self, writer: pq.ParquetWriter) -> None:
        self.writer = writer
        self.compacted: list[pa.Table] = []
        self.pending: list[pa.Table] = []
        self.rows = 0

    def add(self, table: pa.Table) -> None:
        self.pending.append(table)
        self.rows += table.num_rows
        if len(self.pending) >= COMPACT_TABLES:
            self.compacted.append(pa.concat_tables(self.pending).combine_chunks())
            self.pending = []
        if self.rows >= IMAGE_ROW_GROUP:
            self.flush()

    def flush(self) -> None:
        """Write what is held as one row group."""
        if self.rows:
            self.writer.write_table(pa.concat_tables(self.compacted + self.pending),
                                    row_group_size=self.rows)
        self.compacted, self.pending, self.rows = [], [], 0


def _copy_annotation_parts(output: Folder, shard_ids: list[str]) -> None:
    """Copy each shard's annotation part to ``annotations/`` (a storage-side copy)."""
    wanted = {path.rsplit("/", 1)[1]: (shard_id, path)
              for shard_id, path in parts.merged_annotation_parts(shard_ids).items()}
    for stale in set(output.list(parts.MERGED_ANNOTATIONS_DIR)) - set(wanted):
        output.remove(f"{parts.MERGED_ANNOTATIONS_DIR}/{stale}")
    for shard_id, path in wanted.values():
        output.copy(parts.shard_part(shard_id, parts.ANNOTATIONS), path)


def _fragment(output: Folder, shard_id: str, position: int, labeled: int,
              annotations: int) -> Fragment:
    """The shard's committed COCO fragments (rendered now for shards committed without)."""
    images_path = parts.shard_file(shard_id, parts.COCO_IMAGES_FRAGMENT)
    annotations_path = parts.shard_file(shard_id, parts.COCO_ANNOTATIONS_FRAGMENT)
    if output.exists(images_path) and output.exists(annotations_path):
        return Fragment(output, images_path, annotations_path, labeled, annotations,
                        position=position)
    logger.info("shard %s was committed without COCO fragments: rendering them", shard_id)
    image_rows = parts.read_part(output, parts.shard_part(shard_id, parts.IMAGES),
                                 parts.IMAGES).to_pylist()
    annotation_rows = parts.read_part(output, parts.shard_part(shard_id, parts.ANNOTATIONS),
                                      parts.ANNOTATIONS).to_pylist()
    images, n_images, records, n_records = shard_fragments(image_rows, annotation_rows)
    legacy = (f"{_LEGACY_FRAGMENTS}/{shard_id}.images.json",
              f"{_LEGACY_FRAGMENTS}/{shard_id}.annotations.json")
    output.write_bytes(legacy[0], images)
    output.write_bytes(legacy[1], records)
    return Fragment(output, *legacy, n_images, n_records, temporary=True, position=position)
