"""Where an output's parts live and how one is written and read, defined once.

Layout under ``OUTPUT/``::

    run/shards/<shard>/images.parquet          a shard's image rows (schema.IMAGES)
    run/shards/<shard>/annotations.parquet     a shard's annotation rows (schema.ANNOTATIONS)
    run/shards/<shard>/coco_images.json        its labeled images as COCO records (a fragment,
    run/shards/<shard>/coco_annotations.json   :mod:`labeler.output.coco_records`), and its
                                               annotations: the COCO files are their bytes
    run/output.json                            categories and COCO info of the merged output
    images.parquet                             every shard's image rows, plan order
    annotations/part-NNNNNN-<shard>.parquet    a copy of each shard's annotation part (made
                                               by the storage, not read by the driver),
                                               NNNNNN = the shard's position in the plan
    coco.json                                  the run's COCO file, or above
    coco/part-NNNNN.json, coco/index.json      ``coco_max_annotations`` several of them
                                               (:mod:`labeler.output.coco_files`)
    README.md                                  the dataset card (labeler.output.card)

A part is one Parquet file holding one table with its schema; the runtime commits a shard's
parts through its retrying run folder, the merge copies and concatenates them, readers and
exporters read them back through :func:`read_part`.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from labeler.io.folders import Folder
from labeler.output import schema
from labeler.output.coco_files import COCO_DIR

SHARDS_DIR = "run/shards"
#: Categories and COCO info of a merged output, so exports need no ``coco.json``.
OUTPUT_META = "run/output.json"
#: The method's categories, reported by the first worker (outputs merged before run/output.json).
RUN_CATEGORIES = "run/categories.json"
MERGED_IMAGES = "images.parquet"
MERGED_ANNOTATIONS_DIR = "annotations"
COCO_JSON = "coco.json"
#: The Hugging Face dataset card (``datasets.load_dataset(OUTPUT)``, :mod:`labeler.output.card`).
DATASET_CARD = "README.md"
#: The final outputs beside ``run/`` (what ``--overwrite`` removes with it).
FINAL_OUTPUTS = (MERGED_ANNOTATIONS_DIR, COCO_JSON, COCO_DIR, MERGED_IMAGES, DATASET_CARD)
#: A shard's COCO fragments: its labeled images' records and its annotations' records.
COCO_IMAGES_FRAGMENT = "coco_images.json"
COCO_ANNOTATIONS_FRAGMENT = "coco_annotations.json"


@dataclass(frozen=True)
class PartKind:
    """One kind of per-shard part: its file name and its table schema."""

    file_name: str
    schema: pa.Schema


IMAGES = PartKind("images.parquet", schema.IMAGES)
ANNOTATIONS = PartKind("annotations.parquet", schema.ANNOTATIONS)
#: Both kinds, in the order a shard commits them (images last: they say the shard is whole).
KINDS = (ANNOTATIONS, IMAGES)


def shard_file(shard_id: str, file_name: str) -> str:
    """The path of a file in a shard's part folder, relative to the output folder."""
    return f"{SHARDS_DIR}/{shard_id}/{file_name}"


def shard_part(shard_id: str, kind: PartKind) -> str:
    """The path of a shard's part of ``kind``, relative to the output folder."""
    return shard_file(shard_id, kind.file_name)


def merged_annotation_part(position: int, shard_id: str) -> str:
    """The merged copy of the annotation part of the plan's ``position``-th shard."""
    return f"{MERGED_ANNOTATIONS_DIR}/part-{position:06d}-{shard_id}.parquet"


def merged_annotation_parts(shard_ids: Sequence[str]) -> dict[str, str]:
    """Shard id -> its merged annotation part, for the plan's shards in order."""
    return {shard_id: merged_annotation_part(index, shard_id)
            for index, shard_id in enumerate(shard_ids)}


def encode_part(kind: PartKind, rows: Sequence[dict]) -> bytes:
    """The Parquet bytes of a part holding ``rows`` (dicts with the kind's columns)."""
    buffer = io.BytesIO()
    with pq.ParquetWriter(buffer, kind.schema) as writer:
        if rows:  # an empty part has no row group: Hugging Face datasets cannot read an empty one
            writer.write_table(pa.Table.from_pylist(list(rows), schema=kind.schema))
    return buffer.getvalue()


def read_part(output: Folder, relative: str, kind: PartKind) -> pa.Table:
    """Read one part (a shard's, or a merged copy) with its kind's schema: one read of the
    file (one request on object stores), decoded on this thread.

    Columns a part was written without (an older labeler) read as nulls; columns the schema no
    longer has are dropped.
    """
    data = output.read_bytes(relative)
    table = pq.ParquetFile(pa.BufferReader(data)).read(use_threads=False)
    if table.schema.equals(kind.schema):
        return table
    columns = [table.column(field.name).cast(field.type) if field.name in table.column_names
               else pa.nulls(table.num_rows, field.type) for field in kind.schema]
    return pa.Table.from_arrays(columns, schema=kind.schema)
