"""Run the evaluation protocols over an output folder and a ground truth; build the report.

Protocols (names accepted by ``--protocol``):

* ``miou``: dataset-level mIoU from one confusion matrix (class-aware predictions).
* ``slime``: the SLiMe paper's per-image protocol (class-aware predictions).
* ``hungarian``: the DiffSeg unsupervised protocol, per-image Hungarian matching.
* ``hungarian-dataset``: one Hungarian matching over the dataset-level confusion matrix.
* ``coco-ap``: COCO segmentation AP (pycocotools), COCO ground truth only.

``auto`` (the default) selects ``miou,slime`` for class-aware predictions and
``hungarian,hungarian-dataset`` for class-agnostic ones, plus ``coco-ap`` when the ground truth
is a COCO file. ``all`` selects every protocol applicable to the inputs.

A DiffSeg run with ``names`` is class-aware (its categories are the names), so it gets the
semantic protocols, its names matched to the ground-truth classes; its ``segment`` category
(segments no name explains) counts as unannotated (``ClassMapping.unnamed``). ``pred_kind =
"segments"`` scores the same output class-agnostically (Hungarian over its segments).

COCO ground truth holds instances: ``hungarian`` matches each GT instance (not each class) to a
segment, so an output scored against its own ``coco.json`` gets 100. ``hungarian-dataset`` does
not apply to class-agnostic predictions with COCO ground truth (neither segment nor instance
numbers mean anything across images).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from labeler import metrics
from labeler.eval.loading import (
    ClassMapping,
    EvalInputError,
    GroundTruth,
    Predictions,
    build_class_mapping,
    determine_num_classes,
    iter_pairs,
    load_ground_truth,
    pair_images,
    resolve_classes,
)
from labeler.eval.sources import open_predictions

log = logging.getLogger(__name__)

PROTOCOLS = ("miou", "slime", "hungarian", "hungarian-dataset", "coco-ap")
SEMANTIC = ("miou", "slime")

DESCRIPTIONS = {
    "miou": "Dataset-level IoU from one confusion matrix summed over all images: "
    "IoU_c = TP_c / (TP_c + FP_c + FN_c); mIoU = mean over classes with a non-zero denominator.",
    "slime": "SLiMe per-image protocol: per image, IoU_c = |P∩G| / |P∪G| for each class present in "
    "that image's ground truth (background included, absent classes skipped); per-class score = "
    "mean over the images containing the class; mIoU = mean of the per-class scores. "
    "mean_image_mIoU = mean over images of each image's mean over its present classes.",
    "hungarian": "DiffSeg unsupervised protocol: per image, Hungarian matching (max overlap, "
    "one-to-one) of GT classes (label maps) or GT instances (COCO) to predicted segments; "
    "TP/FP/FN summed per class over the dataset; "
    "pixel accuracy = ΣTP / valid pixels; IoU_c = TP/(TP+FP+FN); mIoU = nanmean over classes.",
    "hungarian-dataset": "Dataset-level variant: one Hungarian matching on the confusion matrix "
    "summed over the dataset (PiCIE/STEGO style); same TP/FP/FN, accuracy and IoU definitions.",
    "coco-ap": "COCO segmentation AP (pycocotools COCOeval, iouType=segm) over the paired images.",
}


@dataclass
class EvalOptions:
    """Options of ``labeler eval`` (see ``labeler.eval.command`` for the flags)."""

    protocols: list[str] | None = None
    """Protocol names, or None / ``["auto"]`` for the automatic choice, ``["all"]`` for all."""
    pred_kind: str = "auto"
    """``auto``, ``segments`` or ``classes``."""
    class_match: str = "auto"
    """``auto``, ``name`` or ``id`` (see ``build_class_mapping``)."""
    classes: str | None = None
    """Comma-separated class names, or a URI of a classes file, for label-map ground truth."""
    num_classes: int | None = None
    ignore_index: int = 255
    unannotated: str = "background"
    """Class-aware predictions: unannotated pixels are ``background`` or ``void``."""
    per_image: bool = True


def _applies(protocol: str, pred_kind: str, gt_kind: str) -> bool:
    if protocol in SEMANTIC:
        return pred_kind == "classes"
    if protocol == "coco-ap":
        return gt_kind == "coco"
    if protocol == "hungarian-dataset":
        return not (pred_kind == "segments" and gt_kind == "coco")
    return True


def resolve_protocols(requested: list[str] | None, pred_kind: str, gt_kind: str) -> list[str]:
    """Expand ``auto``/``all`` and check that each protocol applies to the inputs."""
    names: list[str] = []
    for item in requested or ["auto"]:
        names.extend(p.strip() for p in item.split(",") if p.strip())
    if not names or names == ["auto"]:
        chosen = list(SEMANTIC) if pred_kind == "classes" else ["hungarian", "hungarian-dataset"]
        if gt_kind == "coco":
            chosen.append("coco-ap")
        return [p for p in chosen if _applies(p, pred_kind, gt_kind)]
    if names == ["all"]:
        return [p for p in PROTOCOLS if _applies(p, pred_kind, gt_kind)]
    out: list[str] = []
    for name in names:
        if name not in PROTOCOLS:
            raise EvalInputError(
                f"unknown protocol {name!r}; choose from auto, all, {', '.join(PROTOCOLS)}"
            )
        if name in SEMANTIC and pred_kind == "segments":
            raise EvalInputError(
                f"protocol {name!r} needs class-aware predictions, but these are class-agnostic "
                "segments (DiffSeg) whose ids are not classes: use hungarian or hungarian-dataset "
                "(or --pred-kind classes if the categories are real classes)"
            )
        if name == "coco-ap" and gt_kind != "coco":
            raise EvalInputError("protocol 'coco-ap' needs a COCO instances file as ground truth")
        if not _applies(name, pred_kind, gt_kind):
            raise EvalInputError(
                "protocol 'hungarian-dataset' does not apply to class-agnostic segments against "
                "COCO instances (segment and instance numbers mean nothing across images): "
                "use hungarian or coco-ap"
            )
        if name not in out:
            out.append(name)
    return out


def _num(x: float) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def _pred_kind(preds: Predictions, requested: str) -> str:
    if requested == "auto":
        return "segments" if preds.is_class_agnostic else "classes"
    if requested not in ("segments", "classes"):
        raise EvalInputError(f"unknown --pred-kind {requested!r}")
    return requested


def evaluate(
    pred_uri: str,
    gt_uri: str,
    options: EvalOptions | None = None,
    storage_options: dict | None = None,
) -> dict[str, Any]:
    """Evaluate the predictions at ``pred_uri`` against ``gt_uri``; returns the JSON-ready report.

    ``pred_uri`` is a run's output, a folder holding ``coco.json``, or a COCO instances or
    results file (:func:`labeler.eval.sources.open_predictions`).

    ``storage_options`` (fsspec endpoint, credentials) apply to both, as for ``labeler run``.
    Raises ``EvalInputError`` for unusable inputs.
    """
    options = options or EvalOptions()
    gt = load_ground_truth(
        gt_uri,
        resolve_classes(options.classes, storage_options),
        options.ignore_index,
        storage_options,
    )
    preds = open_predictions(pred_uri, gt, storage_options)
    kind = _pred_kind(preds, options.pred_kind)
    protocols = resolve_protocols(options.protocols, kind, gt.kind)
    warnings: list[str] = []

    pairing = pair_images(preds, gt)
    if not pairing.pairs:
        raise EvalInputError(
            f"no predicted image could be paired with the ground truth ({len(preds.images)} labeled "
            f"images, {len(pairing.gt_without_prediction)} ground-truth images); pairing is by file stem "
            "for label-map folders and by file_name, base name or stem for COCO files"
        )
    if pairing.ambiguous:
        warnings.append(f"{len(pairing.ambiguous)} predicted images skipped: ambiguous file names")

    if options.num_classes is not None:
        gt.num_classes = options.num_classes
        if gt.classes is not None and len(gt.classes) < options.num_classes:
            gt.classes = gt.classes + [
                f"class_{i}" for i in range(len(gt.classes), options.num_classes)
            ]
    if gt.num_classes is None:
        gt.num_classes = determine_num_classes(gt, [k for _, k in pairing.pairs])
        if gt.num_classes == 0:
            raise EvalInputError("the paired ground-truth label maps hold no valid label")
    k = gt.num_classes
    if gt.classes is not None and len(gt.classes) > k:
        gt.classes = gt.classes[:k]

    mapping: ClassMapping | None = None
    if kind == "classes":
        mapping = build_class_mapping(preds, gt, options.class_match)
        if mapping.unmapped:
            warnings.append(
                "predicted categories without a ground-truth class (their pixels count as misses): "
                + ", ".join(mapping.unmapped[:20])
            )
            log.warning(warnings[-1])

    need_pixels = any(p != "coco-ap" for p in protocols)
    total_cm: np.ndarray | None = None
    slime = metrics.SlimeAccumulator(k)
    hungarian = metrics.UnsupervisedAccumulator(k)
    per_image: list[dict[str, Any]] = []
    per_instance = gt.kind == "coco" and "hungarian" in protocols
    if need_pixels:
        for pair in iter_pairs(
            preds, gt, pairing.pairs, kind, mapping, options.unannotated, per_instance
        ):
            image_id, gt_labels, pred_labels = pair.image_id, pair.gt_labels, pair.pred_labels
            num_pred = max(k, int(pred_labels.max()) + 1 if pred_labels.size else 0)
            cm = metrics.confusion_matrix(gt_labels, pred_labels, k, num_pred, options.ignore_index)
            total_cm = metrics.add_confusion(total_cm, cm)
            row: dict[str, Any] = {
                "image_id": image_id,
                "file_name": preds.images[image_id].file_name,
                "valid_pixels": int(cm.sum()),
            }
            if "slime" in protocols:
                ious = slime.add(cm)
                row["slime_mIoU"] = _num(metrics.nanmean(ious))
            if "miou" in protocols:
                row["mIoU"] = _num(metrics.semantic_scores(cm).miou)
            if "hungarian" in protocols:
                if per_instance:
                    assert pair.gt_instances is not None
                    rows = pair.instance_class
                    cm_rows = metrics.confusion_matrix(
                        pair.gt_instances, pred_labels, len(rows), num_pred, None
                    )
                else:
                    rows, cm_rows = None, cm
                counts = hungarian.add(cm_rows, rows)
                s = metrics.unsupervised_scores(counts.tp, counts.fp, counts.fn, int(cm.sum()))
                row["hungarian_pixel_accuracy"] = _num(s.pixel_accuracy)
                row["hungarian_mIoU"] = _num(s.miou)
            per_image.append(row)
    assert total_cm is not None or not need_pixels

    names = [gt.class_name(i) for i in range(k)]
    results: dict[str, Any] = {}
    for protocol in protocols:
        entry: dict[str, Any] = {"description": DESCRIPTIONS[protocol]}
        if protocol == "miou":
            s = metrics.semantic_scores(total_cm)
            entry.update(
                mIoU=_num(s.miou),
                mean_accuracy=_num(s.mean_accuracy),
                pixel_accuracy=_num(s.pixel_accuracy),
                per_class={
                    names[c]: {
                        "iou": _num(s.iou[c]),
                        "accuracy": _num(s.accuracy[c]),
                        "gt_pixels": int(s.gt_pixels[c]),
                        "pred_pixels": int(s.pred_pixels[c]),
                    }
                    for c in range(k)
                },
            )
        elif protocol == "slime":
            per_class = slime.per_class()
            entry.update(
                mIoU=_num(slime.miou()),
                mean_image_mIoU=_num(slime.mean_image_miou()),
                per_class={
                    names[c]: {"iou": _num(per_class[c]), "n_images": int(slime.n_images[c])}
                    for c in range(k)
                },
            )
        elif protocol in ("hungarian", "hungarian-dataset"):
            if protocol == "hungarian":
                s = hungarian.scores()
                assignment = None
            else:
                s, assignment = metrics.dataset_hungarian_scores(total_cm)
            entry.update(
                pixel_accuracy=_num(s.pixel_accuracy),
                mIoU=_num(s.miou),
                per_class={
                    names[c]: {
                        "iou": _num(s.iou[c]),
                        "tp": int(s.tp[c]),
                        "fp": int(s.fp[c]),
                        "fn": int(s.fn[c]),
                    }
                    for c in range(k)
                },
            )
            if assignment is not None:
                entry["assignment"] = {names[c]: int(assignment[c]) for c in range(k)}
        elif protocol == "coco-ap":
            entry.update(_coco_ap(preds, gt, pairing.pairs, kind, mapping))
        results[protocol] = entry

    failed = [r for r in preds.records if r.status == "failed"]
    report: dict[str, Any] = {
        "pred": pred_uri,
        "gt": gt_uri,
        "gt_format": gt.kind,
        "prediction_kind": kind,
        "num_classes": k,
        "classes": names,
        "ignore_index": options.ignore_index,
        "unannotated_pixels": "void" if kind == "segments" else options.unannotated,
        "class_mapping": None
        if mapping is None
        else {
            "rule": mapping.rule,
            "categories": {
                str(preds.categories[cid].get("name", cid)): names[idx]
                if idx < k
                else f"class_{idx}"
                for cid, idx in sorted(mapping.category_to_class.items())
            },
            "unmapped": mapping.unmapped,
            "unnamed": sorted(str(preds.categories[cid].get("name", cid)) for cid in mapping.unnamed),
        },
        "images": {
            "evaluated": len(pairing.pairs),
            "predictions_without_gt": len(pairing.predictions_without_gt),
            "gt_without_prediction": len(pairing.gt_without_prediction),
            "ambiguous": len(pairing.ambiguous),
            "failed_in_run": len(failed),
            "examples_gt_without_prediction": pairing.gt_without_prediction[:20],
            "examples_predictions_without_gt": pairing.predictions_without_gt[:20],
        },
        "protocols": results,
        "warnings": warnings,
    }
    if options.per_image:
        report["per_image"] = per_image
    return report


def _coco_ap(
    preds: Predictions,
    gt: GroundTruth,
    pairs: list[tuple[int, Any]],
    kind: str,
    mapping: ClassMapping | None,
) -> dict[str, Any]:
    from labeler.eval.coco_ap import coco_segm_ap

    if kind == "segments":
        pred_to_gt = None
    else:
        assert mapping is not None
        class_to_gt_cat: dict[int, int] = {}
        for cat_id, index in sorted(gt.category_to_class.items()):
            class_to_gt_cat.setdefault(index, cat_id)
        pred_to_gt = {
            cid: class_to_gt_cat[idx]
            for cid, idx in mapping.category_to_class.items()
            if idx in class_to_gt_cat
        }
    result = coco_segm_ap(preds, gt, pairs, pred_to_gt)
    out: dict[str, Any] = {name: (v if v >= 0 else None) for name, v in result.stats.items()}
    out.update(
        class_agnostic=result.class_agnostic,
        n_results=result.n_results,
        n_dropped_unmapped=result.n_dropped,
        n_images=result.n_images,
    )
    return out
