"""``coco-rle`` and ``coco-polygons``: COCO instances files with relative ``file_name``.

``coco-rle`` keeps the output's compressed RLE; ``coco-polygons`` writes each mask as polygons
(:mod:`.polygons`: holes cut in, every fragment kept). Both stream images and annotations
through temporary JSON-lines parts, then write ``annotations.json`` in one pass.
"""

from __future__ import annotations

import json

from labeler.output.exporters.base import ExportContext, Exporter
from labeler.output.exporters.polygons import mask_polygons
from labeler.output.exporters.source import ExportImage, decode_mask


class CocoExporter(Exporter):
    """COCO instances at ``annotations.json`` (``layout`` sets the file and images folder)."""

    annotations_file = "annotations.json"
    polygons = False

    def __init__(self, context: ExportContext) -> None:
        super().__init__(context)
        self._images = context.out.open_atomic_writer(f"{self.annotations_file}.images.part")
        self._annotations = context.out.open_atomic_writer(f"{self.annotations_file}.ann.part")
        self._image_handle = self._images.__enter__()
        self._annotation_handle = self._annotations.__enter__()

    def add(self, image: ExportImage, annotations: list[dict]) -> None:
        record = {
            "id": image.image_id,
            "file_name": image.file_name,
            "width": image.width,
            "height": image.height,
            "coco_url": image.uri,
        }
        self._image_handle.write((json.dumps(record, ensure_ascii=False) + "\n").encode())
        for annotation in annotations:
            if self.polygons:
                polygons = mask_polygons(decode_mask(annotation), self.context.tolerance)
                annotation = {
                    **annotation,
                    "segmentation": [[round(float(v), 2) for v in p.ravel()] for p in polygons],
                }
            self._annotation_handle.write((json.dumps(annotation) + "\n").encode())

    def close(self) -> list[str]:
        self._images.__exit__(None, None, None)
        self._annotations.__exit__(None, None, None)
        out = self.context.out
        info = {**self.context.info, "segmentation": "polygons" if self.polygons else "rle"}
        with out.open_atomic_writer(self.annotations_file) as handle:
            handle.write(('{"info": ' + json.dumps(info, sort_keys=True)).encode())
            for key, part in (("images", ".images.part"), ("annotations", ".ann.part")):
                handle.write(f',\n"{key}": ['.encode())
                with out.open(self.annotations_file + part) as lines:
                    for number, line in enumerate(lines):
                        handle.write((b",\n" if number else b"\n") + line.rstrip(b"\n"))
                handle.write(b"]")
                out.remove(self.annotations_file + part)
            handle.write((',\n"categories": ' + json.dumps(self.context.categories) + "}\n").encode())
        return [self.annotations_file]


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
    label_types="segmentations")`` loads it with instance masks and each annotation's ``score``
    as ``confidence``; without ``--images copy|link`` pass ``data_path=`` the image root.
    """

    annotations_file = "labels.json"
    images_subdir = "data"
