"""``label-maps``: one PNG per image, at the image's original size.

* semantic outputs (SLiMe: named classes): an indexed (palette) 8-bit PNG whose pixel values are
  the COCO ``category_id`` (0 = background / unlabeled), colours from a fixed palette;
* instance outputs (DiffSeg: the one class-agnostic ``segment`` category): a 16-bit grey PNG
  whose pixel values are 1-based instance numbers within the image (0 = unlabeled); the instance
  number to annotation id, score and category is in ``instances.jsonl``.

``masks/<file_name stem>.png`` keeps the image's sub-path; ``label_maps.json`` says which kind,
with the categories.
"""

from __future__ import annotations

import io
import json
import posixpath

import numpy as np
from PIL import Image

from labeler.errors import UserError
from labeler.output.exporters.base import ExportContext, Exporter
from labeler.output.exporters.long_names import original_name_field
from labeler.output.exporters.source import ExportImage
from labeler.output.rle import decode_mask


def palette(n: int = 256) -> list[int]:
    """The PASCAL VOC colour map (bit-interleaved), flattened RGB for ``n`` entries."""
    colours = []
    for index in range(n):
        r = g = b = 0
        value = index
        for bit in range(8):
            r |= ((value >> 0) & 1) << (7 - bit)
            g |= ((value >> 1) & 1) << (7 - bit)
            b |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        colours += [r, g, b]
    return colours


class LabelMapExporter(Exporter):
    names_files = True

    def __init__(self, context: ExportContext) -> None:
        super().__init__(context)
        names = [c["name"] for c in context.categories]
        self.instances = names == ["segment"]
        if not self.instances and max(c["id"] for c in context.categories) > 255:
            raise UserError("label-maps: category ids above 255 do not fit an indexed PNG")
        self._index = None
        if self.instances:
            self._index = self.open_file("instances.jsonl")

    def add(self, image: ExportImage, annotations: list[dict]) -> None:
        dtype = np.uint16 if self.instances else np.uint8
        label_map = np.zeros((image.height, image.width), dtype)
        for number, annotation in enumerate(annotations, start=1):
            value = number if self.instances else annotation["category_id"]
            label_map[decode_mask(annotation["segmentation"]).astype(bool)] = value
            if self._index is not None:
                record = {"file_name": image.file_name, "image_id": image.image_id,
                          "value": number, "annotation_id": annotation["id"],
                          "category_id": annotation["category_id"], "score": annotation["score"],
                          **original_name_field(image.original_name)}
                self._index.write((json.dumps(record, ensure_ascii=False) + "\n").encode())
        if self.instances:
            picture = Image.fromarray(label_map)  # 16-bit grey (mode I;16)
        else:
            picture = Image.fromarray(label_map, mode="P")
            picture.putpalette(palette())
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        stem = posixpath.splitext(image.file_name)[0]
        self.context.out.write_bytes(f"masks/{stem}.png", buffer.getvalue())

    def close(self) -> list[str]:
        kind = "instances-16bit" if self.instances else "semantic-indexed"
        self.context.out.write_json(
            "label_maps.json", {"kind": kind, "categories": self.context.categories,
                                "background": 0, "info": self.context.info}
        )
        return ["label_maps.json", "masks/"] + (["instances.jsonl"] if self.instances else [])
