"""Review aids applied at export: renaming and merging classes, a seeded train/val split.

Neither changes the run's output. A rename maps a category name to another; when two or more
categories end up with one name they are merged: the first keeps its id, and in each image the
masks of the merged classes are united into one annotation (area and bbox from the union, the
score the area-weighted mean of the parts, the smallest id). Annotations of one original
category stay separate instances (DiffSeg's segments renamed stay segments).

The split draws each image's side from a hash of the seed and its ``file_name``, so it does not
depend on the collection order or size, and an image keeps its side when images are added.
"""

from __future__ import annotations

import hashlib

import numpy as np
from pycocotools import mask as mask_utils

from labeler.errors import UserError

TRAIN, VAL = "train", "val"


def parse_renames(values: list[str]) -> dict[str, str]:
    """``["wheel=car", "body=car"]`` -> ``{"wheel": "car", "body": "car"}`` (``--rename``)."""
    renames: dict[str, str] = {}
    for value in values:
        old, sep, new = value.partition("=")
        if not sep or not old or not new:
            raise UserError(f"--rename {value!r}: expected OLD=NEW")
        if old in renames and renames[old] != new:
            raise UserError(f"--rename {old} is given twice ({renames[old]}, {new})")
        renames[old] = new
    return renames


class CategoryMerger:
    """The categories after renames, and the per-image mapping of annotations onto them.

    Args:
        categories: the output's COCO categories.
        renames: old name -> new name.

    Raises:
        UserError: a rename of a class the output does not have.
    """

    def __init__(self, categories: list[dict], renames: dict[str, str]) -> None:
        names = [c["name"] for c in categories]
        unknown = sorted(set(renames) - set(names))
        if unknown:
            raise UserError(f"--rename of unknown classes {', '.join(unknown)} "
                            f"(the output's classes: {', '.join(names)})")
        self.categories: list[dict] = []
        kept: dict[str, int] = {}
        self.id_of: dict[int, int] = {}
        for category in categories:
            name = renames.get(category["name"], category["name"])
            if name not in kept:
                kept[name] = category["id"]
                self.categories.append({**category, "name": name})
            self.id_of[category["id"]] = kept[name]
        self.merges = len(self.categories) < len(categories)

    def apply(self, annotations: list[dict]) -> list[dict]:
        """One image's annotations on the new categories, merged classes united."""
        if not self.merges:
            return [{**a, "category_id": self.id_of[a["category_id"]]} for a in annotations]
        groups: dict[int, list[dict]] = {}
        for annotation in annotations:
            groups.setdefault(self.id_of[annotation["category_id"]], []).append(annotation)
        merged = []
        for new_id, group in groups.items():
            if len({a["category_id"] for a in group}) == 1:
                merged += [{**a, "category_id": new_id} for a in group]
            else:
                merged.append(_union(group, new_id))
        return sorted(merged, key=lambda a: a["id"])


def _union(group: list[dict], category_id: int) -> dict:
    """One annotation covering the masks of ``group`` (COCO annotations with compressed RLE)."""
    rles = [{"size": a["segmentation"]["size"], "counts": a["segmentation"]["counts"].encode()}
            for a in group]
    union = mask_utils.merge(rles, intersect=False)
    areas = np.array([a["area"] for a in group], np.float64)
    scores = np.array([a["score"] for a in group], np.float64)
    return {
        **min(group, key=lambda a: a["id"]),
        "category_id": category_id,
        "segmentation": {"size": list(union["size"]), "counts": union["counts"].decode("ascii")},
        "area": int(mask_utils.area(union)),
        "bbox": [float(v) for v in mask_utils.toBbox(union)],
        "score": float((areas * scores).sum() / max(areas.sum(), 1.0)),
    }


def split_of(file_name: str, val_fraction: float, seed: int) -> str:
    """``"val"`` for about ``val_fraction`` of the names, ``"train"`` for the rest."""
    if val_fraction <= 0:
        return TRAIN
    digest = hashlib.blake2b(f"{seed}\0{file_name}".encode(), digest_size=8).digest()
    return VAL if int.from_bytes(digest, "big") / 2.0**64 < val_fraction else TRAIN
