"""``coco-rle``: one COCO instances file, ``coco.json``, with compressed RLE masks.

Images are the labeled ones (``id``, ``file_name`` = source URI, original ``width`` and
``height``); annotations carry ``segmentation`` (RLE with string ``counts`` at the original
resolution), ``area``, ``bbox``, ``iscrowd`` 0 and ``score``. The file is written as a stream
through an atomic writer, one image or annotation at a time: readers never see half a file and
memory does not grow with the collection.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from labeler.io.storage import Folder
from labeler.output import parts, schema
from labeler.output.exporters.base import refuse_unknown_options
from labeler.output.reader import OutputReader


def coco_image(row: dict) -> dict:
    """The COCO image record of one labeled ``images.parquet`` row."""
    return {"id": row["image_id"], "file_name": row["uri"], "width": row["width"],
            "height": row["height"]}


def coco_annotation(row: dict) -> dict:
    """A COCO annotation record from one ``annotations/`` row."""
    return {
        "id": row["id"],
        "image_id": row["image_id"],
        "category_id": row["category_id"],
        "segmentation": {
            "size": list(row["segmentation_size"]),
            "counts": row["segmentation_counts"],
        },
        "area": row["area"],
        "bbox": list(row["bbox"]),
        "iscrowd": row["iscrowd"],
        "score": row["score"],
    }


class CocoRleExporter:
    """Writes ``coco.json`` (see the module docstring); takes no options."""

    name = "coco-rle"
    description = "coco.json: COCO instances, compressed RLE masks (what labeler run writes)"

    def write(self, reader: OutputReader, out: Folder, options: Mapping[str, Any]) -> list[str]:
        refuse_unknown_options(self, options, set())
        with out.open_atomic_writer(parts.COCO_JSON) as raw:
            write = lambda text: raw.write(text.encode("utf-8"))
            write('{"info": ' + json.dumps(reader.info, sort_keys=True) + ',\n"images": [')
            separator = "\n"
            for row in reader.image_rows():
                if row["status"] == schema.IMAGE_STATUS_LABELED:
                    write(separator + json.dumps(coco_image(row), ensure_ascii=False))
                    separator = ",\n"
            write('],\n"annotations": [')
            separator = "\n"
            for row in reader.annotation_rows():
                write(separator + json.dumps(coco_annotation(row)))
                separator = ",\n"
            write('],\n"categories": ' + json.dumps(reader.categories) + "}\n")
        return [parts.COCO_JSON]
