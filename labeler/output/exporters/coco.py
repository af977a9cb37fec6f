"""``coco-rle`` and ``coco-polygons``: COCO instances files with relative ``file_name``.

``coco-rle`` keeps the output's compressed RLE; ``coco-polygons`` writes each mask as polygons
(:mod:`.polygons`: holes cut in, every fragment kept). Both stream images and annotations
through temporary JSON-lines parts, then write ``annotations.json`` in one pass. With
``--val-fraction`` there is one file per split instead, ``annotations_train.json`` and
``annotations_val.json`` (CVAT: ``instances_train.json`` and ``instances_val.json``, which
CVAT and Datumaro read as the subsets ``train`` and ``val``).
"""

from __future__ import annotations

import json
import posixpath

from labeler.output.exporters.base import ExportContext, Exporter
from labeler.output.exporters.polygons import mask_polygons
from labeler.output.exporters.source import ExportImage, decode_mask


class CocoExporter(Exporter):
    """COCO instances at ``annotations.json`` (``layout`` sets the file and images folder)."""

    annotations_file = "annotations.json"
    polygons = False

    def __init__(self, context: ExportContext) -> None:
        super().__init__(context)
        self._parts: dict[str, tuple] = {}

    def _file_of(self, split: str) -> str:
        if self.context.options.val_fraction <= 0:
            return self.annotations_file
        stem, extension = posixpath.splitext(self.annotations_file)
        stem = stem.removesuffix("_default")
        return f"{stem}_{split}{extension}"

    def _handles(self, split: str) -> tuple:
        """The (images, annotations) JSON-lines part handles of a split's file."""
        if split not in self._parts:
            relative = self._file_of(split)
            writers = (self.context.out.open_atomic_writer(f"{relative}.images.part"),
                       self.context.out.open_atomic_writer(f"{relative}.ann.part"))
            self._parts[split] = (relative, writers, tuple(w.__enter__() for w in writers))
        return self._parts[split][2]

    def add(self, image: ExportImage, annotations: list[dict]) -> None:
        image_handle, annotation_handle = self._handles(image.split)
        record = {
            "id": image.image_id,
            "file_name": image.file_name,
            "width": image.width,
            "height": image.height,
            "coco_url": image.uri,
        }
        image_handle.write((json.dumps(record, ensure_ascii=False) + "\n").encode())
        for annotation in annotations:
            if self.polygons:
                polygons = mask_polygons(decode_mask(annotation), self.context.tolerance)
                annotation = {
                    **annotation,
                    "segmentation": [[round(float(v), 2) for v in p.ravel()] for p in polygons],
                }
            annotation_handle.write((json.dumps(annotation) + "\n").encode())

    def close(self) -> list[str]:
        if not self._parts:  # no labeled image: the file still exists, empty
            self._handles("train")
        written = []
        for split, (relative, writers, _) in sorted(self._parts.items()):
            for writer in writers:
                writer.__exit__(None, None, None)
            self._write(relative, split)
            written.append(relative)
        return written

    def _write(self, relative: str, split: str) -> None:
        """Join a split's two parts into its COCO file."""
        out = self.context.out
        info = {**self.context.info, "segmentation": "polygons" if self.polygons else "rle"}
        if self.context.options.val_fraction > 0:
            info["split"] = split
        with out.open_atomic_writer(relative) as handle:
            handle.write(('{"info": ' + json.dumps(info, sort_keys=True)).encode())
            for key, part in (("images", ".images.part"), ("annotations", ".ann.part")):
                handle.write(f',\n"{key}": ['.encode())
                with out.open(relative + part) as lines:
                    for number, line in enumerate(lines):
                        handle.write((b",\n" if number else b"\n") + line.rstrip(b"\n"))
                handle.write(b"]")
                out.remove(relative + part)
            handle.write((',\n"categories": ' + json.dumps(self.context.categories) + "}\n").encode())


class CocoPolygonExporter(CocoExporter):
    polygons = True


class CvatExporter(CocoPolygonExporter):
    """CVAT's COCO 1.0 layout: ``annotations/instances_default.json`` + ``images/``.

    Zip the folder (or point Datumaro at it) and import it as "COCO 1.0"; ``file_name``s are
    relative, so CVAT finds the images under ``images/``.
    """

    annotations_file = "annotations/instances_default.json"


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
    loader_file = "load_fiftyone.py"

    def close(self) -> list[str]:
        written = super().close()
        data_path = self.context.images_dir or self.context.info.get("image_root") or ""
        self.context.out.write_bytes(self.loader_file, _FIFTYONE_LOADER.format(
            data_path=data_path, label_field=self.context.options.label_field).encode())
        return [*written, self.loader_file]


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
