"""``yolo-seg``: the Ultralytics segmentation layout.

::

    data.yaml                 train: images/train, val: images/val (relative to data.yaml),
                              names: {0: ...}
    images/<split>/<file_name>  the images (with ``--images copy|link``)
    labels/<split>/<stem>.txt   one line per instance: class x1 y1 x2 y2 ... (normalised to 0..1)

``<split>`` is ``train`` or ``val`` (``--val-fraction``, seeded). Without a val split ``val``
names the training images, since Ultralytics needs one; its metrics then measure fit, not
generalisation.

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
from labeler.output.exporters.review import TRAIN, VAL
from labeler.output.exporters.source import ExportImage
from labeler.output.rle import decode_mask


class YoloSegExporter(Exporter):
    images_subdir = "images"
    names_files = True

    def __init__(self, context: ExportContext) -> None:
        super().__init__(context)
        self.class_index = {c["id"]: index for index, c in enumerate(context.categories)}
        self.splits: set[str] = set()

    def image_path(self, image: ExportImage) -> str:
        return f"images/{image.split}/{image.file_name}"

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
        self.context.out.write_bytes(f"labels/{image.split}/{stem}.txt", "".join(lines).encode())
        self.splits.add(image.split)

    def close(self) -> list[str]:
        # no ``path``: Ultralytics resolves a relative one against the working directory, and
        # without one against this file's folder
        split = self.context.options.val_fraction > 0
        data = {
            "train": f"images/{TRAIN}",
            "val": f"images/{VAL if split else TRAIN}",
            "names": {index: c["name"] for index, c in enumerate(self.context.categories)},
        }
        self.context.out.write_bytes("data.yaml", yaml.safe_dump(data, sort_keys=False).encode())
        return ["data.yaml"] + [f"labels/{name}/" for name in sorted(self.splits)]
