"""``coco-rle`` and ``coco-polygons``: COCO instances files with relative ``file_name``.

``coco-rle`` keeps the output's compressed RLE; ``coco-polygons`` writes each mask as polygons
(:mod:`.polygons`: holes cut in, every fragment kept). Images and annotations are rendered one
image at a time into temporary fragments (:mod:`labeler.output.coco_records`), which
:class:`~labeler.output.coco_files.CocoFilesWriter` concatenates into ``annotations.json``, or,
above ``--coco-max-annotations``, into ``coco/part-NNNNN.json`` with ``coco/index.json``. With
``--val-fraction`` there is one file per split instead, ``annotations_train.json`` and
``annotations_val.json`` (CVAT: ``instances_train.json`` and ``instances_val.json``, which
CVAT and Datumaro read as the subsets ``train`` and ``val``; split files above the bound go to
``coco/<split>/``). The run's own COCO output is this exporter fed the fragments its workers
rendered (:meth:`CocoExporter.add_fragment`, :class:`RunCocoExporter`).
"""

from __future__ import annotations

import posixpath
import sys
from dataclasses import dataclass

from labeler.output.coco_files import COCO_DIR, DEFAULT_MAX_ANNOTATIONS, CocoFilesWriter, Fragment
from labeler.output.coco_records import coco_image, render
from labeler.output.exporters.base import ExportContext, Exporter
from labeler.output.exporters.long_names import original_name_field
from labeler.output.exporters.polygons import mask_polygons
from labeler.output.exporters.source import ExportImage
from labeler.output.rle import decode_mask

#: The split every image is in without ``--val-fraction``.
ONLY_SPLIT = "train"


@dataclass
class _Pending:
    """The temporary fragment of one split being written (handles and record counts)."""

    paths: tuple[str, str]
    images: object
    annotations: object
    n_images: int = 0
    n_annotations: int = 0


class CocoExporter(Exporter):
    """COCO instances at ``annotations.json`` (``layout`` sets the file and images folder)."""

    annotations_file = "annotations.json"
    #: what the ``info`` block's ``segmentation`` says (``None``: no such key)
    segmentation: str | None = "rle"
    polygons = False
    #: whether ``coco_max_annotations`` splits the export (layouts that name one file do not)
    splits = True

    def __init__(self, context: ExportContext) -> None:
        super().__init__(context)
        self._writers: dict[str, CocoFilesWriter] = {}
        self._pending: dict[str, _Pending] = {}
        self._fragments = 0

    def _file_of(self, split: str) -> str:
        if self.context.options.val_fraction <= 0:
            return self.annotations_file
        stem, extension = posixpath.splitext(self.annotations_file)
        stem = stem.removesuffix("_default")
        return f"{stem}_{split}{extension}"

    def _writer(self, split: str) -> CocoFilesWriter:
        if split not in self._writers:
            info = dict(self.context.info)
            if self.segmentation is not None:
                info["segmentation"] = self.segmentation
            split_files = self.context.options.val_fraction > 0
            if split_files:
                info["split"] = split
            bound = self.context.options.coco_max_annotations or DEFAULT_MAX_ANNOTATIONS
            self._writers[split] = CocoFilesWriter(
                self.context.out, self._file_of(split), info, self.context.categories,
                bound if self.splits else sys.maxsize,
                parts_dir=f"{COCO_DIR}/{split}" if split_files else COCO_DIR,
            )
        return self._writers[split]

    def add(self, image: ExportImage, annotations: list[dict]) -> None:
        split = image.split or ONLY_SPLIT
        bound = self._writer(split).max_annotations
        pending = self._pending.get(split)
        if pending is not None and pending.n_annotations + len(annotations) > bound:
            self._hand_over(split)
            pending = None
        if pending is None:
            pending = self._pending[split] = self._start_fragment()
        record = {**coco_image(image.image_id, image.file_name, image.uri, image.width, image.height),
                  **original_name_field(image.original_name)}
        _append(pending.images, pending.n_images, record)
        pending.n_images += 1
        for annotation in annotations:
            if self.polygons:
                polygons = mask_polygons(decode_mask(annotation["segmentation"]),
                                         self.context.tolerance)
                annotation = {
                    **annotation,
                    "segmentation": [[round(float(v), 2) for v in p.ravel()] for p in polygons],
                }
            _append(pending.annotations, pending.n_annotations, annotation)
            pending.n_annotations += 1

    def add_fragment(self, fragment: Fragment) -> None:
        """Append records rendered elsewhere (a shard's, at commit) after those added so far."""
        if ONLY_SPLIT in self._pending:
            self._hand_over(ONLY_SPLIT)
        self._writer(ONLY_SPLIT).add(fragment)

    def close(self) -> list[str]:
        if not self._writers:  # no labeled image: the file still exists, empty
            self._writer(ONLY_SPLIT)
        written = []
        for split in sorted(self._writers):
            if split in self._pending:
                self._hand_over(split)
            written += self._writers[split].close()
        return written

    def abandon(self) -> None:
        for writer in self._writers.values():
            writer.abort()

    def _start_fragment(self) -> _Pending:
        stem = f"{self.annotations_file}.{self._fragments}"
        self._fragments += 1
        paths = (f"{stem}.images.part", f"{stem}.annotations.part")
        return _Pending(paths, self.open_file(paths[0]), self.open_file(paths[1]))

    def _hand_over(self, split: str) -> None:
        """Publish a split's fragment being written and give it to the split's files writer."""
        pending = self._pending.pop(split)
        self.close_file(pending.images)
        self.close_file(pending.annotations)
        self._writer(split).add(Fragment(self.context.out, *pending.paths, pending.n_images,
                                         pending.n_annotations, temporary=True))


def _append(handle, written: int, record: dict) -> None:
    handle.write((b",\n" if written else b"") + render([record]))


class CocoPolygonExporter(CocoExporter):
    segmentation = "polygons"
    polygons = True


class CvatExporter(CocoPolygonExporter):
    """CVAT's COCO 1.0 layout: ``annotations/instances_default.json`` + ``images/``.

    Zip the folder (or point Datumaro at it) and import it as "COCO 1.0"; ``file_name``s are
    relative, so CVAT finds the images under ``images/``.
    """

    annotations_file = "annotations/instances_default.json"
    splits = False


class FiftyOneExporter(CocoExporter):
    """FiftyOne's ``COCODetectionDataset`` layout: ``labels.json`` (RLE, ``score``) + ``data/``.

    ``fo.Dataset.from_dir(dataset_dir=DIR, dataset_type=fo.types.COCODetectionDataset,
    label_types="segmentations", label_field="predictions")`` loads it with instance masks and
    each annotation's ``score`` as ``confidence``; without ``--images copy|link`` pass
    ``data_path=`` the image root. FiftyOne's own default field is ``ground_truth``, wrong for
    pseudo-labels: ``load_fiftyone.py`` (written beside ``labels.json``) makes that call with
    the ``--label-field`` (default ``predictions``) and the right ``data_path``.
    """

    annotations_file = "labels.json"
    images_subdir = "data"
    splits = False
    loader_file = "load_fiftyone.py"

    def close(self) -> list[str]:
        written = super().close()
        data_path = self.context.images_dir or self.context.info.get("image_root") or ""
        self.context.out.write_bytes(self.loader_file, _FIFTYONE_LOADER.format(
            data_path=data_path, label_field=self.context.options.label_field).encode())
        return [*written, self.loader_file]


class RunCocoExporter(CocoExporter):
    """A run's own COCO output: ``coco.json`` (or split), its ``info`` block as the run made it."""

    annotations_file = "coco.json"
    segmentation = None


_FIFTYONE_LOADER = '''"""Load this export into FiftyOne (written by ``labeler export --format fiftyone``).

Usage: ``python load_fiftyone.py [DATASET_NAME]``, or ``load()`` from Python.
"""

import sys
from pathlib import Path

import fiftyone as fo

HERE = Path(__file__).resolve().parent
#: where the images are: relative to this folder, or the run's image root
DATA_PATH = {data_path!r}
#: the sample field that holds the labels (FiftyOne's default, ground_truth, is not what they are)
LABEL_FIELD = {label_field!r}


def load(name=None):
    """The FiftyOne dataset: instance masks in LABEL_FIELD, each score as ``confidence``."""
    data_path = DATA_PATH if "://" in DATA_PATH else str(HERE / DATA_PATH)
    return fo.Dataset.from_dir(dataset_dir=str(HERE), data_path=data_path,
                               dataset_type=fo.types.COCODetectionDataset,
                               label_types="segmentations", label_field=LABEL_FIELD, name=name)


if __name__ == "__main__":
    sys.stdout.write(f"{{load(sys.argv[1] if len(sys.argv) > 1 else None)}}\\n")
'''
