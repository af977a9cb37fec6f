"""Segmentation metrics as pure numpy functions.

Conventions used throughout this module:

* A ground-truth label map holds class indices ``0..K-1``. Any other value (the ignore index
  255, negative values, values ``>= K``) marks a pixel that is *not evaluated*: it is dropped
  from every count.
* A predicted label map holds non-negative integers (class indices for class-aware predictions,
  segment/cluster ids for class-agnostic ones) or ``VOID`` (any negative value) for a pixel that
  received no prediction. A void pixel is evaluated: it is a miss for its ground-truth class
  (a false negative) and a false positive for nobody; it can never be matched.
* Confusion matrices have shape ``(K, P + 1)``: rows are ground-truth classes, columns
  ``0..P-1`` predicted labels, and the last column counts void predictions.

Protocols (all IoU values are fractions in [0, 1]):

* ``semantic_scores``: dataset-level IoU from one confusion matrix summed over all images,
  ``IoU_c = TP_c / (TP_c + FP_c + FN_c)``; mIoU is the mean over classes whose denominator is
  non-zero (NaN classes skipped).
* ``slime_image_ious`` / ``SlimeAccumulator``: the SLiMe per-image protocol. Per image and per
  class present in that image's ground truth (background included),
  ``IoU = |P and G| / |P or G|``; per-class score = mean over the images where the class is
  present; mIoU = mean of the per-class scores.
* ``hungarian_counts`` / ``UnsupervisedAccumulator``: the DiffSeg protocol. Per image, a
  one-to-one assignment of ground-truth classes to predicted segments maximising overlapping
  pixels (``scipy.optimize.linear_sum_assignment``); TP/FP/FN accumulated over the dataset.
  With instance ground truth (COCO), the rows are the image's instances instead of its
  classes (``instance_hungarian_counts``), and the counts are summed per class.
* ``dataset_hungarian_scores``: the same counts with one assignment over the dataset-level
  confusion matrix (PiCIE/STEGO style).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

VOID = -1
"""Predicted label of a pixel without prediction (any negative value is treated the same)."""

DEFAULT_IGNORE_INDEX = 255


def valid_mask(
    gt: np.ndarray, num_classes: int, ignore_index: int | None = DEFAULT_IGNORE_INDEX
) -> np.ndarray:
    """Boolean mask of the ground-truth pixels that are evaluated.

    A pixel is evaluated when its label lies in ``[0, num_classes)`` and differs from
    ``ignore_index``.
    """
    gt = np.asarray(gt)
    ok = (gt >= 0) & (gt < num_classes)
    if ignore_index is not None:
        ok &= gt != ignore_index
    return ok


def confusion_matrix(
    gt: np.ndarray,
    pred: np.ndarray,
    num_classes: int,
    num_pred: int | None = None,
    ignore_index: int | None = DEFAULT_IGNORE_INDEX,
) -> np.ndarray:
    """Confusion matrix of one image (or any pair of equally shaped label arrays).

    Args:
        gt: ground-truth labels, any integer shape.
        pred: predicted labels, same shape as ``gt``; negative values are void.
        num_classes: K, the number of ground-truth classes.
        num_pred: P, the number of predicted label columns. Defaults to
            ``max(K, max(pred) + 1)``. Predicted labels ``>= P`` are counted as void.
        ignore_index: ground-truth value that is not evaluated.

    Returns:
        int64 array of shape ``(K, P + 1)``; entry ``[c, p]`` counts evaluated pixels with
        ground truth ``c`` and prediction ``p``; column ``P`` counts void predictions.
    """
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
    ok = valid_mask(gt, num_classes, ignore_index)
    g = gt[ok].astype(np.int64)
    p = pred[ok].astype(np.int64)
    if num_pred is None:
        num_pred = max(num_classes, int(p.max()) + 1 if p.size else 0)
    p = np.where((p < 0) | (p >= num_pred), num_pred, p)
    width = num_pred + 1
    counts = np.bincount(g * width + p, minlength=num_classes * width)
    return counts.reshape(num_classes, width)


def pad_columns(cm: np.ndarray, num_pred: int) -> np.ndarray:
    """Return ``cm`` (``(K, P + 1)``, void last) widened to ``num_pred`` predicted columns."""
    k, width = cm.shape
    p = width - 1
    if num_pred < p:
        raise ValueError("cannot shrink a confusion matrix")
    if num_pred == p:
        return cm
    out = np.zeros((k, num_pred + 1), dtype=cm.dtype)
    out[:, :p] = cm[:, :p]
    out[:, -1] = cm[:, -1]
    return out


def add_confusion(total: np.ndarray | None, cm: np.ndarray) -> np.ndarray:
    """Sum two confusion matrices of possibly different widths (void column kept last)."""
    if total is None:
        return cm.copy()
    width = max(total.shape[1], cm.shape[1]) - 1
    return pad_columns(total, width) + pad_columns(cm, width)


def mask_iou(prediction: np.ndarray, target: np.ndarray, smoothing: float = 0.0) -> float:
    """IoU of two boolean masks of the same shape: ``|P and T| / (|P or T| + smoothing)``.

    ``smoothing`` is added to the denominator (SLiMe's reference uses 1e-7, so two empty masks
    give 0); with 0, two empty masks give NaN.
    """
    prediction, target = np.asarray(prediction, bool), np.asarray(target, bool)
    union = float(np.logical_or(prediction, target).sum()) + smoothing
    intersection = float(np.logical_and(prediction, target).sum())
    return intersection / union if union > 0 else float("nan")


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    nz = den > 0
    np.divide(num, den, out=out, where=nz)
    return out


def nanmean(values: np.ndarray) -> float:
    """Mean of the finite entries; NaN when there is none (no RuntimeWarning)."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def class_iou_from_confusion(cm: np.ndarray) -> np.ndarray:
    """Per-class IoU of class-aware predictions from a ``(K, P + 1)`` confusion matrix.

    Column ``c < K`` is the prediction of class ``c``; predicted columns ``>= K`` and the void
    column only add false negatives. ``IoU_c = TP / (GT_c + PRED_c - TP)``, NaN when the class
    is neither in the ground truth nor predicted.
    """
    k = cm.shape[0]
    cm = pad_columns(cm, max(k, cm.shape[1] - 1))
    tp = np.diag(cm[:, :k]).astype(np.float64)
    gt_total = cm.sum(axis=1)
    pred_total = cm[:, :k].sum(axis=0)
    return _safe_div(tp, gt_total + pred_total - tp)


@dataclass
class SemanticScores:
    """Dataset-level scores of class-aware predictions."""

    iou: np.ndarray
    """Per-class IoU (NaN where undefined)."""
    accuracy: np.ndarray
    """Per-class recall ``TP / GT_c`` (NaN for classes absent from the ground truth)."""
    miou: float
    mean_accuracy: float
    pixel_accuracy: float
    gt_pixels: np.ndarray
    pred_pixels: np.ndarray


def semantic_scores(cm: np.ndarray) -> SemanticScores:
    """Dataset-level mIoU, mean class accuracy and pixel accuracy from a summed confusion matrix."""
    k = cm.shape[0]
    cm = pad_columns(cm, max(k, cm.shape[1] - 1))
    tp = np.diag(cm[:, :k]).astype(np.float64)
    gt_total = cm.sum(axis=1)
    pred_total = cm[:, :k].sum(axis=0)
    iou = _safe_div(tp, gt_total + pred_total - tp)
    acc = _safe_div(tp, gt_total)
    total = cm.sum()
    return SemanticScores(
        iou=iou,
        accuracy=acc,
        miou=nanmean(iou),
        mean_accuracy=nanmean(acc),
        pixel_accuracy=float(tp.sum() / total) if total else float("nan"),
        gt_pixels=gt_total.astype(np.int64),
        pred_pixels=pred_total.astype(np.int64),
    )


def slime_image_ious(cm: np.ndarray) -> np.ndarray:
    """SLiMe per-image IoU from one image's confusion matrix.

    For every class present in the image's ground truth, ``|P and G| / |P or G|`` over the
    evaluated pixels; NaN for classes absent from the ground truth (skipped, so false positives
    of absent classes are not penalised).
    """
    k = cm.shape[0]
    iou = class_iou_from_confusion(cm)
    present = cm.sum(axis=1) > 0
    return np.where(present, iou, np.nan)[:k]


@dataclass
class SlimeAccumulator:
    """Accumulates the SLiMe per-image protocol over a dataset."""

    num_classes: int
    iou_sum: np.ndarray = field(init=False)
    n_images: np.ndarray = field(init=False)
    image_means: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.iou_sum = np.zeros(self.num_classes)
        self.n_images = np.zeros(self.num_classes, dtype=np.int64)

    def add(self, cm: np.ndarray) -> np.ndarray:
        """Add one image (its confusion matrix); returns its per-class IoU (NaN = skipped)."""
        ious = slime_image_ious(cm)
        present = np.isfinite(ious)
        self.iou_sum[present] += ious[present]
        self.n_images[present] += 1
        if present.any():
            self.image_means.append(float(ious[present].mean()))
        return ious

    def per_class(self) -> np.ndarray:
        """Per-class mean IoU over the images where the class is in the ground truth."""
        return _safe_div(self.iou_sum, self.n_images)

    def miou(self) -> float:
        """Paper metric: plain mean of the per-class scores (background included)."""
        return nanmean(self.per_class())

    def mean_image_miou(self) -> float:
        """Validation-style variant: mean over images of each image's mean IoU over present classes."""
        return float(np.mean(self.image_means)) if self.image_means else float("nan")


def hungarian_assignment(overlap: np.ndarray) -> np.ndarray:
    """One-to-one assignment of rows (classes) to columns (segments) maximising total overlap.

    Args:
        overlap: ``(K, P)`` matrix with ``P >= K``.

    Returns:
        int array of length K: the column assigned to each row.
    """
    from scipy.optimize import linear_sum_assignment

    k, p = overlap.shape
    if p < k:
        raise ValueError("need at least as many predicted columns as classes")
    rows, cols = linear_sum_assignment(overlap, maximize=True)
    out = np.empty(k, dtype=np.int64)
    out[rows] = cols
    return out


@dataclass
class MatchCounts:
    """True/false positives and false negatives per class after a matching."""

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    assignment: np.ndarray


def hungarian_counts(cm: np.ndarray) -> MatchCounts:
    """TP/FP/FN per class after Hungarian matching of one confusion matrix (DiffSeg rule).

    ``cm`` is ``(K, P + 1)`` with the void column last; the predicted columns are first padded
    to at least K so that every class gets a (possibly empty) segment. With ``m(c)`` the segment
    assigned to class ``c``:

    * ``TP_c = cm[c, m(c)]``
    * ``FN_c = sum_p cm[c, p] - TP_c`` (void pixels and pixels of unmatched segments included)
    * ``FP_c = sum_r cm[r, m(c)] - TP_c``
    """
    k = cm.shape[0]
    cm = pad_columns(cm, max(k, cm.shape[1] - 1))
    seg = cm[:, :-1]
    assignment = hungarian_assignment(seg)
    idx = np.arange(k)
    tp = seg[idx, assignment].astype(np.int64)
    fn = cm.sum(axis=1).astype(np.int64) - tp
    fp = seg.sum(axis=0)[assignment].astype(np.int64) - tp
    return MatchCounts(tp=tp, fp=fp, fn=fn, assignment=assignment)


def instance_hungarian_counts(
    cm: np.ndarray, row_class: np.ndarray, num_classes: int
) -> MatchCounts:
    """Per-instance Hungarian matching of one image, counts summed per class.

    ``cm`` is ``(R, P + 1)``: one row per ground-truth instance (row 0 the background, see
    ``labeler.eval.loading.load_instance_map``), void column last. Every row gets a distinct
    segment as in ``hungarian_counts``; TP/FP/FN of the instances are then added up per class,
    ``row_class[r]`` being the class of row ``r``. The returned ``assignment`` is per row.
    """
    counts = hungarian_counts(cm)
    tp = np.zeros(num_classes, dtype=np.int64)
    fp = np.zeros(num_classes, dtype=np.int64)
    fn = np.zeros(num_classes, dtype=np.int64)
    np.add.at(tp, row_class, counts.tp)
    np.add.at(fp, row_class, counts.fp)
    np.add.at(fn, row_class, counts.fn)
    return MatchCounts(tp=tp, fp=fp, fn=fn, assignment=counts.assignment)


@dataclass
class UnsupervisedScores:
    """Scores of the DiffSeg unsupervised protocols."""

    iou: np.ndarray
    miou: float
    pixel_accuracy: float
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    total: int


def unsupervised_scores(
    tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, total: int
) -> UnsupervisedScores:
    """Pixel accuracy ``sum(TP) / ALL``, ``IoU_c = TP / (TP + FP + FN)`` and nanmean mIoU."""
    tp = np.asarray(tp, dtype=np.int64)
    fp = np.asarray(fp, dtype=np.int64)
    fn = np.asarray(fn, dtype=np.int64)
    iou = _safe_div(tp, tp + fp + fn)
    return UnsupervisedScores(
        iou=iou,
        miou=nanmean(iou),
        pixel_accuracy=float(tp.sum() / total) if total else float("nan"),
        tp=tp,
        fp=fp,
        fn=fn,
        total=int(total),
    )


@dataclass
class UnsupervisedAccumulator:
    """Accumulates the DiffSeg per-image Hungarian protocol over a dataset."""

    num_classes: int
    tp: np.ndarray = field(init=False)
    fp: np.ndarray = field(init=False)
    fn: np.ndarray = field(init=False)
    total: int = 0

    def __post_init__(self) -> None:
        self.tp = np.zeros(self.num_classes, dtype=np.int64)
        self.fp = np.zeros(self.num_classes, dtype=np.int64)
        self.fn = np.zeros(self.num_classes, dtype=np.int64)

    def add(self, cm: np.ndarray, row_class: np.ndarray | None = None) -> MatchCounts:
        """Match one image's segments to its ground-truth rows and add the counts.

        Rows are classes (``cm`` is ``(K, P + 1)``), or instances when ``row_class`` gives the
        class of each row (see ``instance_hungarian_counts``).
        """
        if row_class is None:
            counts = hungarian_counts(cm)
        else:
            counts = instance_hungarian_counts(cm, row_class, self.num_classes)
        self.tp += counts.tp
        self.fp += counts.fp
        self.fn += counts.fn
        self.total += int(cm.sum())
        return counts

    def scores(self) -> UnsupervisedScores:
        """Pixel accuracy, per-class IoU and mIoU over everything added."""
        return unsupervised_scores(self.tp, self.fp, self.fn, self.total)


def dataset_hungarian_scores(cm: np.ndarray) -> tuple[UnsupervisedScores, np.ndarray]:
    """Dataset-level variant: one Hungarian matching on the summed confusion matrix.

    Returns the scores and the assignment (segment/cluster id per class).
    """
    counts = hungarian_counts(cm)
    return unsupervised_scores(counts.tp, counts.fp, counts.fn, int(cm.sum())), counts.assignment
