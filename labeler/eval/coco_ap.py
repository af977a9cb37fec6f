"""COCO segmentation AP of predictions against a COCO instances ground truth (pycocotools).

* Only paired images are evaluated (``params.imgIds`` = the paired GT image ids); unpaired GT
  images are reported by the caller, not counted as misses.
* Predicted annotations become COCO results (``image_id`` = the paired GT id, RLE
  segmentation, ``score``; 1.0 when missing). Their ``bbox`` is left out so that ``loadRes``
  takes the area from the mask. Masks whose size differs from the GT image are resized with
  nearest neighbour.
* Class-aware predictions use the category mapping (predicted category -> GT category); results
  of unmapped categories are dropped. Class-agnostic predictions (DiffSeg ``segment``) are
  evaluated with ``params.useCats = 0`` (class-agnostic AP).
* pycocotools prints to stdout; that output is captured and returned, not printed.
"""

from __future__ import annotations

import contextlib
import copy
import io
from dataclasses import dataclass
from typing import Any

import numpy as np

from labeler.eval.loading import (
    GroundTruth,
    Predictions,
    decode_segmentation,
    resize_nearest,
)
from labeler.output.rle import encode_mask

STAT_NAMES = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)


@dataclass
class CocoApResult:
    """COCOeval ``segm`` summary."""

    stats: dict[str, float]
    class_agnostic: bool
    n_results: int
    n_dropped: int
    n_images: int
    log: str


def build_results(
    preds: Predictions,
    gt: GroundTruth,
    pairs: list[tuple[int, Any]],
    pred_to_gt_category: dict[int, int] | None,
) -> tuple[list[dict[str, Any]], int]:
    """COCO results for the paired images; returns (results, number dropped as unmapped).

    ``pred_to_gt_category`` None means class-agnostic: every result gets the first GT category.
    """
    gt_cats = sorted(int(c["id"]) for c in gt.coco.get("categories", [])) if gt.coco else []
    results: list[dict[str, Any]] = []
    dropped = 0
    gt_of = dict(pairs)
    for image in preds.annotated(gt_of):
        gt_id = gt_of[image.image_id]
        gt_image = gt.coco_images[int(gt_id)]
        gh, gw = int(gt_image["height"]), int(gt_image["width"])
        for ann in image.annotations:
            if pred_to_gt_category is None:
                category = gt_cats[0] if gt_cats else 1
            else:
                category = pred_to_gt_category.get(int(ann["category_id"]))
                if category is None:
                    dropped += 1
                    continue
            seg = ann["segmentation"]
            size = list(seg.get("size", [])) if isinstance(seg, dict) else []
            if (
                size != [gh, gw]
                or not isinstance(seg, dict)
                or not isinstance(seg.get("counts"), str)
            ):
                mask = decode_segmentation(seg, image.height, image.width)
                if mask.shape != (gh, gw):
                    mask = resize_nearest(mask.astype(np.int64), gh, gw).astype(bool)
                seg = encode_mask(mask)
            results.append(
                {
                    "image_id": int(gt_id),
                    "category_id": int(category),
                    "segmentation": {"size": list(seg["size"]), "counts": seg["counts"]},
                    "score": float(ann.get("score", 1.0) if ann.get("score") is not None else 1.0),
                }
            )
    return results, dropped


def coco_segm_ap(
    preds: Predictions,
    gt: GroundTruth,
    pairs: list[tuple[int, Any]],
    pred_to_gt_category: dict[int, int] | None,
) -> CocoApResult:
    """Run ``COCOeval(iouType="segm")`` on the paired images and return its 12 summary stats.

    With no result at all, every stat is 0.0 (nothing detected) when the GT has instances.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    assert gt.coco is not None
    results, dropped = build_results(preds, gt, pairs, pred_to_gt_category)
    img_ids = sorted({int(g) for _, g in pairs})
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        dataset = copy.deepcopy(gt.coco)
        dataset.setdefault("info", {})
        dataset.setdefault("licenses", [])
        for ann in dataset.get("annotations", []):
            seg = ann.get("segmentation")
            if isinstance(seg, dict) and isinstance(seg.get("counts"), bytes):
                seg["counts"] = seg["counts"].decode("ascii")
            ann.setdefault("iscrowd", 0)
            ann.setdefault("area", 0)
        coco_gt = COCO()
        coco_gt.dataset = dataset
        coco_gt.createIndex()
        if results:
            coco_dt = coco_gt.loadRes(results)
            ev = COCOeval(coco_gt, coco_dt, iouType="segm")
            ev.params.imgIds = img_ids
            if pred_to_gt_category is None:
                ev.params.useCats = 0
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            stats = [float(x) for x in ev.stats]
        else:
            stats = [0.0] * len(STAT_NAMES)
    return CocoApResult(
        stats=dict(zip(STAT_NAMES, stats)),
        class_agnostic=pred_to_gt_category is None,
        n_results=len(results),
        n_dropped=dropped,
        n_images=len(img_ids),
        log=buffer.getvalue(),
    )
