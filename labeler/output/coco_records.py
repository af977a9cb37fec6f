"""COCO records, built in one place: the run's COCO files, the exporters and the API use these.

An image record holds ``id``, ``file_name`` (relative to the image root), the source URI as
``coco_url`` and the original ``width``/``height``; an annotation record holds ``segmentation``
(compressed RLE with string counts at the original resolution), ``area``, ``bbox``, ``iscrowd``
0 and ``score``. :func:`render` turns records into the JSON text the COCO files are made of: a
*fragment*, one record per line, lines joined by ``",\\n"``, so fragments rendered by different
processes concatenate into one file byte for byte.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

import numpy as np

from labeler.output import schema
from labeler.output.rle import encode_label_map
from labeler.output.rows import annotation_id


def coco_image(image_id: int, file_name: str, uri: str, width: int, height: int) -> dict:
    """The COCO image record of one labeled image."""
    return {"id": image_id, "file_name": file_name, "coco_url": uri, "width": width,
            "height": height}


def coco_image_of_row(row: dict) -> dict:
    """The COCO image record of one labeled ``images.parquet`` row."""
    return coco_image(row["image_id"], row["file_name"] or row["uri"], row["uri"], row["width"],
                      row["height"])


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


def label_map_annotations(label_map: np.ndarray, category_ids: Sequence[int],
                          scores: Sequence[float], image_id: int) -> list[dict]:
    """COCO annotation records of an (H, W) label map (label k: ``category_ids[k]``).

    Ids are :func:`labeler.output.rows.annotation_id` of the label; labels covering no pixel
    get no record.
    """
    records = []
    for label, (mask, category, score) in enumerate(
        zip(encode_label_map(label_map, len(category_ids)), category_ids, scores,
            strict=True)
    ):
        if mask.area:
            records.append(coco_annotation({
                "id": annotation_id(image_id, label), "image_id": image_id,
                "category_id": int(category), "segmentation_counts": mask.counts,
                "segmentation_size": [mask.height, mask.width], "area": mask.area,
                "bbox": mask.bbox, "iscrowd": 0, "score": float(score),
            }))
    return records


#: ``json.dumps(record, ensure_ascii=False)``, without building an encoder per record.
_ENCODER = json.JSONEncoder(ensure_ascii=False)


def render(records: Iterable[dict]) -> bytes:
    """The fragment of ``records``: one JSON record per line, joined by ``",\\n"``."""
    return ",\n".join(map(_ENCODER.encode, records)).encode()


def shard_fragments(image_rows: Iterable[dict],
                    annotation_rows: Iterable[dict]) -> tuple[bytes, int, bytes, int]:
    """A shard's COCO fragments from its part rows: its labeled images, then its annotations
    (in part order).

    Returns:
        images, n_images, annotations, n_annotations: each fragment and its record count.
    """
    images = [coco_image_of_row(row) for row in image_rows
              if row["status"] == schema.IMAGE_STATUS_LABELED]
    annotations = [coco_annotation(row) for row in annotation_rows]
    return render(images), len(images), render(annotations), len(annotations)
