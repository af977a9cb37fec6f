"""``hf``: a Hugging Face dataset folder, training-ready (``datasets.load_dataset(DIR)``).

::

    README.md                      dataset card: the ``default`` config, its splits
    data/<split>-NNNNN.parquet     one row per labeled image (files of at most ~512 MiB)

``<split>`` is ``train``, and ``validation`` for the images ``--val-fraction`` puts aside.

A row: ``image`` (the ``Image`` feature, ``struct<bytes, path>``: with ``--images copy`` the
encoded bytes are embedded and ``path`` is the relative file name; otherwise ``bytes`` is null
and ``path`` the source URI, which ``datasets`` opens when the row is decoded), ``image_id``,
``file_name``, ``width``, ``height`` and ``objects``: a list of ``{id, category, bbox, area,
score, segmentation: {size, counts}}`` where ``category`` is a ``ClassLabel`` (0-based position in
the output's categories) and ``segmentation`` the mask as COCO compressed RLE at the image's
resolution (``pycocotools.mask.decode({"size": size, "counts": counts.encode()})`` is its
(H, W) 0/1 mask). The features are recorded in each Parquet file's schema metadata (key
``huggingface``), so ``datasets`` reads ``category`` back as a ``ClassLabel`` with the names.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from labeler.errors import UserError
from labeler.io.reading import read_image_bytes
from labeler.io.refs import ref_from_uri
from labeler.output.exporters.base import ExportContext, Exporter
from labeler.output.exporters.source import ExportImage

#: the dataset split of each export split (Hugging Face's names)
SPLITS = {"train": "train", "val": "validation"}
#: rows buffered before a row group is written (bounds memory with embedded images)
ROWS_PER_GROUP = 64
#: a new data file is started once one holds this many bytes
MAX_FILE_BYTES = 512 << 20

_OBJECT = pa.struct([
    ("id", pa.int64()),
    ("category", pa.int64()),
    ("bbox", pa.list_(pa.float64(), 4)),
    ("area", pa.int64()),
    ("score", pa.float64()),
    ("segmentation", pa.struct([("size", pa.list_(pa.int32(), 2)), ("counts", pa.string())])),
])
SCHEMA = pa.schema([
    ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
    ("image_id", pa.int64()),
    ("file_name", pa.string()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("objects", pa.list_(_OBJECT)),
])


def features(names: list[str]) -> dict:
    """The ``datasets.Features`` of :data:`SCHEMA` as its JSON dict, ``category`` a ClassLabel."""
    def value(dtype: str) -> dict:
        return {"dtype": dtype, "_type": "Value"}

    return {
        "image": {"_type": "Image"},
        "image_id": value("int64"),
        "file_name": value("string"),
        "width": value("int32"),
        "height": value("int32"),
        "objects": {"_type": "List", "feature": {
            "id": value("int64"),
            "category": {"names": names, "_type": "ClassLabel"},
            "bbox": {"_type": "List", "feature": value("float64"), "length": 4},
            "area": value("int64"),
            "score": value("float64"),
            "segmentation": {
                "size": {"_type": "List", "feature": value("int32"), "length": 2},
                "counts": value("string"),
            },
        }},
    }


class HfExporter(Exporter):
    """``hf``: Parquet files with the ``datasets`` features and a dataset card."""

    #: images are embedded in the rows (``--images copy``), never placed as files
    images_subdir = None

    def __init__(self, context: ExportContext) -> None:
        if context.images == "link":
            raise UserError("--format hf embeds images (--images copy) or references their "
                            "source (--images none); --images link is not possible")
        super().__init__(context)
        self.class_index = {c["id"]: index for index, c in enumerate(context.categories)}
        names = [c["name"] for c in context.categories]
        self.schema = SCHEMA.with_metadata(
            {"huggingface": json.dumps({"info": {"features": features(names)}})})
        self._writers = {split: _SplitWriter(self, split, self.schema)
                         for split in SPLITS.values()}

    def add(self, image: ExportImage, annotations: list[dict]) -> None:
        if self.context.images == "copy":
            data = read_image_bytes(ref_from_uri(image.uri),
                                    storage_options=self.context.storage_options)
            stored = {"bytes": data, "path": image.file_name}
        else:
            stored = {"bytes": None, "path": image.uri}
        self._writers[SPLITS[image.split]].add({
            "image": stored,
            "image_id": image.image_id,
            "file_name": image.file_name,
            "width": image.width,
            "height": image.height,
            "objects": [{
                "id": a["id"],
                "category": self.class_index[a["category_id"]],
                "bbox": a["bbox"],
                "area": a["area"],
                "score": a["score"],
                "segmentation": a["segmentation"],
            } for a in annotations],
        })

    def close(self) -> list[str]:
        for writer in self._writers.values():
            writer.close()
        train = self._writers[SPLITS["train"]]
        if not train.files:  # no training image: one empty file keeps the dataset loadable
            train.write_empty()
        splits = [split for split, writer in self._writers.items() if writer.files]
        card = {"configs": [{"config_name": "default", "default": True, "data_files": [
            {"split": split, "path": f"data/{split}-*.parquet"} for split in splits
        ]}], "tags": ["labeler", "pseudo-labels", "image-segmentation"]}
        body = (f"# {self.context.info.get('description', 'labeler pseudo-labels')}\n\n"
                "`datasets.load_dataset(DIR)`; `objects.category` is a ClassLabel, "
                "`objects.segmentation` COCO compressed RLE (see labeler's docs/outputs.md).\n")
        self.open_file("README.md").write(
            f"---\n{yaml.safe_dump(card, sort_keys=False)}---\n\n{body}".encode())
        return ["README.md", "data/"]

    def abandon(self) -> None:
        """Remove the data files published before the export failed."""
        for writer in self._writers.values():
            for relative in writer.published:
                self.context.out.remove(relative)


class _SplitWriter:
    """The Parquet files of one split: row groups of :data:`ROWS_PER_GROUP` rows, a new file
    past :data:`MAX_FILE_BYTES`, each opened and published through the exporter."""

    def __init__(self, exporter: Exporter, split: str, schema: pa.Schema) -> None:
        self.exporter, self.split, self.schema = exporter, split, schema
        self.files = 0
        #: the files published so far (a file past the size bound, before the export ends)
        self.published: list[str] = []
        self._rows: list[dict] = []
        self._relative = self._handle = self._writer = None

    def add(self, row: dict) -> None:
        self._rows.append(row)
        if len(self._rows) >= ROWS_PER_GROUP:
            self._flush()

    def _next_file(self):
        self._relative = f"data/{self.split}-{self.files:05d}.parquet"
        self.files += 1
        return self.exporter.open_file(self._relative)

    def _flush(self) -> None:
        if not self._rows:
            return
        if self._writer is None:
            self._handle = self._next_file()
            self._writer = pq.ParquetWriter(self._handle, self.schema)
        self._writer.write_table(pa.Table.from_pylist(self._rows, schema=self.schema))
        self._rows = []
        if self._handle.tell() >= MAX_FILE_BYTES:
            self._close_file()

    def _close_file(self) -> None:
        self._writer.close()
        self.exporter.close_file(self._handle)
        self.published.append(self._relative)
        self._writer = None

    def close(self) -> None:
        self._flush()
        if self._writer is not None:
            self._close_file()

    def write_empty(self) -> None:
        """A file of no row group (``datasets`` cannot read an empty row group)."""
        self._handle = self._next_file()
        self._writer = pq.ParquetWriter(self._handle, self.schema)
        self._close_file()
