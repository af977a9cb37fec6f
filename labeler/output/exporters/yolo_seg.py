"""``yolo-seg``: the Ultralytics segmentation layout.

::

    data.yaml                 train/val: images/train (relative to data.yaml), names: {0: ...}
    images/train/<file_name>  the images (with ``--images copy|link``)
    labels/train/<stem>.txt   one line per instance: class x1 y1 x2 y2 ... (normalised to 0..1)

Class ids are 0-based positions in the output's categories. An instance is one polygon: its
fragments and holes are joined by zero-width cuts (:func:`.polygons.single_polygon`), as
Ultralytics' own COCO converter does for multi-part masks. Images without annotations get an
empty label file (a background image, not a missing one).
"""

from __future__ import annotations

import posixpath

import yaml

from labeler.output.exporters.base import ExportContext, Exporter
from labeler.output.exporters.polygons import mask_polygons, single_polygon
from labeler.output.exporters.source import ExportImage
from labeler.output.rle import decode_mask

SPLIT = "train"


class YoloSegExporter(Exporter):
    images_subdir = f"images/{SPLIT}"

    def __init__(self, context: ExportContext) -> None:
        super().__init__(context)
        self.class_index = {c["id"]: index for index, c in enumerate(context.categories)}

    def add(self, image: ExportImage, annotations: list[dict]) -> None:
        lines = []
        for annotation in annotations:
            polygon = single_polygon(mask_polygons(decode_mask(annotation["segmentation"]), self.context.tolerance))
            if polygon is None:
                continue
            normalised = (polygon / [image.width, image.height]).clip(0.0, 1.0).ravel()
            coordinates = " ".join(f"{value:.6f}" for value in normalised)
            lines.append(f"{self.class_index[annotation['category_id']]} {coordinates}\n")
        stem = posixpath.splitext(image.file_name)[0]
        self.context.out.write_bytes(f"labels/{SPLIT}/{stem}.txt", "".join(lines).encode())

    def finish(self) -> list[str]:
        # no ``path``: Ultralytics resolves a relative one against the working directory, and
        # without one against this file's folder
        data = {
            "train": f"images/{SPLIT}",
            "val": f"images/{SPLIT}",
            "names": {index: c["name"] for index, c in enumerate(self.context.categories)},
        }
        self.context.out.write_bytes("data.yaml", yaml.safe_dump(data, sort_keys=False).encode())
        return ["data.yaml", f"labels/{SPLIT}/"]
