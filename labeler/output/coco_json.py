"""``coco.json``, the COCO instances file every run writes beside ``images.parquet``.

Images are the labeled ones (``id``, ``file_name`` relative to the image root, the source URI as
``coco_url``, original ``width`` and ``height``); annotations carry ``segmentation`` (compressed
RLE with string ``counts`` at the original resolution), ``area``, ``bbox``, ``iscrowd`` 0 and
``score``. The file is streamed from an :class:`~labeler.output.reader.OutputReader` through an
atomic writer, one record at a time: readers never see half a file, and memory does not grow
with the collection.
"""

from __future__ import annotations

import json

from labeler.io.folders import Folder
from labeler.output import parts, schema
from labeler.output.reader import OutputReader


def coco_image(row: dict) -> dict:
    """The COCO image record of one labeled ``images.parquet`` row."""
    return {"id": row["image_id"], "file_name": row["file_name"] or row["uri"],
            "coco_url": row["uri"], "width": row["width"], "height": row["height"]}


def coco_annotation(row: dict) -> dict:
    """A COCO annotation record from one ``annotations/`` row (with ``name_score`` when the row
    has one)."""
    record = {
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
    if row.get("name_score") is not None:
        record["name_score"] = row["name_score"]
    return record


def write_coco_json(reader: OutputReader, out: Folder, relative: str = parts.COCO_JSON) -> None:
    """Stream ``reader``'s labeled images, annotations and categories to ``out/relative``."""
    with out.open_atomic_writer(relative) as raw:
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
