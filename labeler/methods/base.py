"""What every segmentation method returns, and the interface the runtime drives."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from labeler.methods.label_maps import axis_weights, nearest_indices

if TYPE_CHECKING:
    import torch

    from labeler.timing import StageTimer

#: Annotation ids are ``image_id * MAX_LABELS_PER_IMAGE + label``: stable without a global counter.
MAX_LABELS_PER_IMAGE = 4096


@dataclass(frozen=True)
class ImageLabels:
    """The labels of one image at its original resolution.

    The map may be held at the label grid with the nearest resize to the image (``rows``,
    ``cols``): the image's (H, W) map is ``grid[rows[:, None], cols[None, :]]``, built only when
    :attr:`label_map` is read; the mask encoder reads the grid and the index maps directly
    (:func:`labeler.output.rle.encode_label_map`), so no full-resolution map is made.

    Attributes:
        grid: (h, w) integer label values at the label grid (the image's own (H, W) when
            ``rows`` and ``cols`` are None); ``k >= 0`` is label k, ``-1`` means no annotation
            (SLiMe background).
        category_ids: (L,) int64, the COCO category id of each label value.
        scores: (L,) float64 in [0, 1], a confidence per label (the annotation ``score``).
        name_scores: (L,) float64 in [0, 1], how well each label's category name explains it
            (DiffSeg with ``names``; the annotation's ``name_score``), or None.
        rows, cols: (H,) and (W,) non-decreasing grid row (column) of each image row (column),
            or None for a map at the image's size.
        category_names: (L,) the category name of each label when the method's categories are
            open (DiffSeg's caption nouns: per image), or None (the method's categories name
            every id).
    """

    grid: np.ndarray
    category_ids: np.ndarray
    scores: np.ndarray
    name_scores: np.ndarray | None = None
    rows: np.ndarray | None = None
    cols: np.ndarray | None = None
    category_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.grid.ndim != 2:
            raise ValueError(f"label_map must be (H, W), got {self.grid.shape}")
        if len(self.category_ids) != len(self.scores):
            raise ValueError("category_ids and scores must have one entry per label")
        if self.name_scores is not None and len(self.name_scores) != len(self.scores):
            raise ValueError("name_scores must have one entry per label")
        if self.category_names is not None and len(self.category_names) != len(self.scores):
            raise ValueError("category_names must have one entry per label")
        if len(self.category_ids) > MAX_LABELS_PER_IMAGE:
            raise ValueError(f"at most {MAX_LABELS_PER_IMAGE} labels per image")
        if (self.rows is None) != (self.cols is None):
            raise ValueError("rows and cols are given together or not at all")
        if self.rows is not None:
            for index, size in ((self.rows, self.grid.shape[0]), (self.cols, self.grid.shape[1])):
                if index.ndim != 1 or not len(index) or index[0] < 0 or index[-1] >= size or (
                        np.any(index[1:] < index[:-1])):
                    raise ValueError("rows and cols must be non-empty, non-decreasing indices "
                                     "into the grid")

    @property
    def shape(self) -> tuple[int, int]:
        """The image's (H, W)."""
        if self.rows is None:
            return self.grid.shape
        return len(self.rows), len(self.cols)

    @cached_property
    def label_map(self) -> np.ndarray:
        """(H, W) label values at the image's size (the grid expanded, on first use)."""
        if self.rows is None:
            return self.grid
        return self.grid[self.rows[:, None], self.cols[None, :]]

    def resized(self, height: int, width: int) -> ImageLabels:
        """These labels nearest-resized to (height, width), half-pixel centres (what
        :func:`~labeler.methods.label_maps.resize_labels` does to :attr:`label_map`): only the
        index maps change, composed with the resize."""
        if self.shape == (height, width):
            return self
        rows = nearest_indices(height, self.shape[0])
        cols = nearest_indices(width, self.shape[1])
        if self.rows is not None:
            rows, cols = self.rows[rows], self.cols[cols]
        return replace(self, rows=rows, cols=cols)


@dataclass(frozen=True)
class MethodProvenance:
    """How a segmenter makes its labels: recorded with every annotation (``method``, ``model``,
    ``resource_digest``) and in the worker's stats.

    Attributes:
        method: the method's name.
        model: the model it runs on (what the user named), None for a method without one.
        model_fingerprint: a digest of the model's configs or weights, when it has one.
        resource_digest: a digest of the method's own resource (SLiMe: the embedding set;
            DiffewS: the support set), None when it has none.
        settings: the effective settings, as plain JSON values.
    """

    method: str
    model: str | None = None
    model_fingerprint: str | None = None
    resource_digest: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)


class Segmenter(Protocol):
    """A method loaded once per worker and applied to many batches of images.

    Attributes:
        categories: COCO categories (``id``, ``name``, ``supercategory``) this method emits.
        timer: seconds per stage of the method (recorded in each shard's stats).
        device: where the method runs (recorded in the worker's stats).
        decode_side: optional: the side the method resizes images to (its model input), so
            the decoder may reduce an image while both sides stay >= it; None (or absent):
            the method needs full-size pixels (a parity mode). Read with :func:`decode_side`.
    """

    categories: list[dict]
    timer: StageTimer
    device: torch.device | str

    def label(self, images: list[np.ndarray]) -> list[ImageLabels]:
        """Label a batch of (H_i, W_i, 3) uint8 RGB images (sizes may differ)."""
        ...

    def provenance(self) -> MethodProvenance:
        """Method name, model, resource digest and settings (recorded with every annotation)."""
        ...


class TwoStepSegmenter(Segmenter, Protocol):
    """A segmenter whose ``label`` is ``[finish(raw) for raw in label_raw(images)]``.

    The runtime calls ``label_raw`` on the model's thread and ``finish`` on its post-processing
    threads, so the host work of one batch overlaps the model on the next. Segmenters without
    these two methods are driven through ``label`` alone.
    """

    def label_raw(self, images: list[np.ndarray]) -> list:
        """The device step for a batch: one raw output per image, in order."""
        ...

    def finish(self, raw) -> ImageLabels:
        """The host step for one image: its labels from its raw output (thread-safe)."""
        ...


def decode_side(segmenter: Segmenter) -> int | None:
    """The side ``segmenter`` needs decoded images to keep (its ``decode_side``), or None for
    full size: also for segmenters that do not say."""
    side = getattr(segmenter, "decode_side", None)
    return side if isinstance(side, int) and side >= 1 else None


def compact_labels(
    label_map: np.ndarray, confidence: np.ndarray, category_of: np.ndarray | None = None
) -> ImageLabels:
    """Renumber the labels present in ``label_map`` to 0..L-1 and score each by mean confidence.

    Args:
        label_map: (H, W) integer map, negative (``-1``) for no annotation.
        confidence: (H, W) float, the per-pixel confidence of the winning label.
        category_of: category id per original label value; defaults to category 1 for all.
    """
    compact, categories, scores = _compact(label_map, confidence, None, category_of)
    return ImageLabels(compact, categories, scores)


def compact_resized_labels(
    grid_labels: np.ndarray,
    grid_confidence: np.ndarray,
    height: int,
    width: int,
    category_of: np.ndarray | None = None,
) -> ImageLabels:
    """:func:`compact_labels` of the maps nearest-resized to (height, width), done on the grid.

    The labels are those of ``compact_labels(resize_labels(grid_labels, ...), ...)``; each score
    is still the mean over the full-resolution pixels, as a mean over grid cells weighted by the
    pixels each cell becomes (equal up to rounding). The compact int32 map stays at the grid,
    with the resize as index maps (:meth:`ImageLabels.resized`).

    Args:
        grid_labels: (h, w) integer map at the label grid, negative for no annotation.
        grid_confidence: (h, w) float, the winning label's confidence at the grid.
        height, width: the original image size.
        category_of: category id per original label value; defaults to category 1 for all.
    """
    weights = None
    if grid_labels.shape != (height, width):
        weights = (axis_weights(height, grid_labels.shape[0]),
                   axis_weights(width, grid_labels.shape[1]))
    compact, categories, scores = _compact(grid_labels, grid_confidence, weights, category_of)
    return ImageLabels(compact, categories, scores).resized(height, width)


def _compact(
    label_map: np.ndarray,
    confidence: np.ndarray,
    weights: tuple[np.ndarray, np.ndarray] | None,
    category_of: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Relabel and score per run of equal values along the rows, not per cell.

    The map's runs along its rows are found once (one comparison over the map); pixel counts
    are sums of run lengths (times the cell weights: exact integers), the lookup to 0..L-1
    applies to the runs' values, and the compact map is the runs' new values repeated. The
    confidence sums take one pass over the confidence: per run, then per label, when every sum
    is exact whatever the order (:func:`_sums_are_exact`: the bits of a sequential sum);
    otherwise sequentially over the cells in map order, as a per-cell bincount adds them.

    Args:
        label_map: (h, w) integer map, negative for no annotation.
        confidence: (h, w) float.
        weights: (h,) and (w,) pixels per grid row and column (a cell becomes their product),
            or None for one each.

    Returns:
        the (h, w) int32 compact map, (L,) int64 categories, (L,) float64 scores.
    """
    if not label_map.size:
        return (np.full(label_map.shape, -1, np.int32), np.zeros(0, np.int64),
                np.zeros(0, np.float64))
    starts, lengths, run_values = _row_runs(label_map)
    values, inverse = _ranked(run_values)
    if weights is None:
        run_pixels = lengths
    else:
        row_weights, col_weights = (w.astype(np.float64) for w in weights)
        row, col = np.divmod(starts, label_map.shape[1])
        col_edges = np.concatenate(([0.0], np.cumsum(col_weights)))
        run_pixels = row_weights[row] * (col_edges[col + lengths] - col_edges[col])
    pixels = np.bincount(inverse, weights=run_pixels, minlength=len(values))
    kept = (values >= 0) & (pixels > 0)
    sums = _confidence_sums(confidence, weights, starts, lengths, inverse, len(values))
    scores = np.clip(sums[kept] / np.maximum(pixels[kept], 1), 0.0, 1.0)
    present = values[kept]
    if len(present) == len(values) and present[-1] == len(present) - 1:  # 0..L-1 already
        compact = label_map.astype(np.int32, copy=False)  # labels never write to their grid
    else:
        lookup = np.full(len(values), -1, np.int32)
        lookup[kept] = np.arange(len(present), dtype=np.int32)
        compact = np.repeat(lookup[inverse], lengths).reshape(label_map.shape)
    categories = np.ones(len(present), np.int64) if category_of is None else category_of[present]
    return compact, categories.astype(np.int64), scores


def _row_runs(label_map: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The runs of equal values along the rows of a non-empty (h, w) map, in map order (a run
    ends at its row's end).

    Returns:
        starts: (R,) intp flat row-major position of each run's first cell.
        lengths: (R,) intp cells per run.
        values: (R,) int64 each run's value, negative values as ``-1``.
    """
    flat = label_map.reshape(-1)
    new_run = np.empty(flat.size, bool)  # compared in one flat pass (twice as fast as by rows)
    np.not_equal(flat[1:], flat[:-1], out=new_run[1:])
    new_run[::label_map.shape[1]] = True  # each row's first cell starts a run
    starts = np.flatnonzero(new_run)
    lengths = np.diff(starts, append=flat.size)
    values = np.maximum(flat[starts].astype(np.int64), -1)
    return starts, lengths, values


def _ranked(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values of ``values`` (R,) int64 >= -1, ascending, and the rank of each
    (what ``np.unique(values, return_inverse=True)`` gives; a table over small values)."""
    if int(values.max()) >= _TABLE_VALUES:
        return np.unique(values, return_inverse=True)
    seen = np.zeros(int(values.max()) + 2, np.intp)
    seen[values + 1] = 1
    distinct = np.flatnonzero(seen)
    rank = np.cumsum(seen) - 1
    return distinct - 1, rank[values + 1]


def _confidence_sums(confidence: np.ndarray, weights: tuple[np.ndarray, np.ndarray] | None,
                     starts: np.ndarray, lengths: np.ndarray, inverse: np.ndarray,
                     n_values: int) -> np.ndarray:
    """(n_values,) float64 sum of the confidence (times each cell's pixels) per ranked value.

    Exact sums (:func:`_sums_are_exact`) are taken per run (``add.reduceat`` over the rows'
    cells, the row's weight applied to the run), then per value; otherwise cell by cell in map
    order, the bits of a sequential sum.
    """
    flat = confidence.reshape(-1)
    if _sums_are_exact(confidence, weights):
        if weights is None:
            run_sums = np.add.reduceat(flat, starts, dtype=np.float64)
        else:
            row_weights, col_weights = weights
            weighted = confidence * col_weights.astype(np.float64)[None, :]
            run_sums = np.add.reduceat(weighted.reshape(-1), starts)
            run_sums *= row_weights.astype(np.float64)[starts // confidence.shape[1]]
        return np.bincount(inverse, weights=run_sums, minlength=n_values)
    cell_weights = flat.astype(np.float64)
    if weights is not None:
        cell_weights *= np.multiply.outer(*(w.astype(np.float64) for w in weights)).ravel()
    return np.bincount(np.repeat(inverse, lengths), weights=cell_weights, minlength=n_values)


#: Above this label value the runs' values are ranked by sorting instead of a table.
_TABLE_VALUES = 1 << 16


def _sums_are_exact(confidence: np.ndarray, weights: tuple[np.ndarray, np.ndarray] | None) -> bool:
    """Whether every float64 sum of ``confidence`` (times the cell weights) is exact, whatever
    the order of the additions: then summing per run, then the runs, gives the bits of a
    sequential sum.

    It is when the confidence is a binary float of p <= 24 significant bits, finite and
    non-negative: every value (and every product with an integer weight below 2**(53 - p)) is a
    multiple of ``step``, 2**(p - 1) times below the smallest non-zero value; every partial sum
    is a multiple of ``step`` no larger than the total, ``max * pixels``; below ``2**53 * step``
    all of them are representable. (Winner probabilities of <= ~1000 candidates at 1 Mpx are.)
    """
    if confidence.dtype not in (np.float16, np.float32) or not confidence.size:
        return False
    low, high = float(confidence.min()), float(confidence.max())
    if not 0.0 <= low <= high < np.inf:
        return False
    if high == 0.0:
        return True
    if low == 0.0:
        low = float(np.min(confidence, where=confidence > 0, initial=high))
    significant = np.finfo(confidence.dtype).nmant + 1
    step = 2.0 ** (np.frexp(low)[1] - significant)
    pixels = confidence.size
    if weights is not None:
        rows, cols = weights
        if float(rows.max()) * float(cols.max()) >= 2.0 ** (53 - significant):
            return False
        pixels = float(rows.sum()) * float(cols.sum())
    return high * pixels < 2.0**53 * step
