"""The one COCO RLE codec of labeler: label maps to compressed RLE (area, bbox), and back.

Encoding: label maps to COCO compressed RLE, with area and bbox, for every label in one pass.
Decoding: :func:`decode_mask` (a full mask, for exporters, eval and verify's samples) and
:func:`decode_counts` (the run lengths of many masks at once, without building any mask: what
``labeler verify`` checks sizes, areas and boxes from).

COCO run-length encoding reads a mask in column-major (Fortran) order and alternates counts of
0-pixels and 1-pixels, starting with 0s (a leading 0 when the first pixel is set). The compressed
string form stores each count minus the count two places before it (from the fourth count on),
as little-endian groups of 5 bits, one character (value + 48) per group, bit 0x20 set while more
groups follow, and the last group's bit 0x10 carrying the sign.

Instead of one full-image comparison and one encode per label, :func:`encode_label_map` finds
the runs of equal values once, groups them by label, and builds all labels' counts, strings,
areas and boxes with array operations; the output is the same, byte for byte, as
``pycocotools.mask.encode`` / ``area`` / ``toBbox`` applied to each ``label_map == k``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils

#: Bits per character of the compressed RLE string, and the offset of its alphabet.
_GROUP_BITS = 5
_ALPHABET_START = 48


@dataclass(frozen=True)
class EncodedMask:
    """One binary mask as COCO compressed RLE (JSON-safe) with its area and bbox.

    Attributes:
        counts: the compressed RLE string (pycocotools' bytes, decoded as ASCII).
        height, width: the mask size (COCO ``size`` is ``[height, width]``).
        area: number of foreground pixels.
        bbox: ``[x, y, w, h]`` of the foreground, in pixels (floats, as COCO); zeros when empty.
    """

    counts: str
    height: int
    width: int
    area: int
    bbox: list[float]

    def segmentation(self) -> dict:
        """The COCO ``segmentation`` field."""
        return {"size": [self.height, self.width], "counts": self.counts}


@dataclass(frozen=True)
class _Runs:
    """Runs of one label value in column-major order, grouped by label (ascending).

    Attributes:
        label: (R,) label of each run, non-decreasing.
        start, stop: (R,) int64 flat column-major positions, ``stop`` exclusive.
    """

    label: np.ndarray
    start: np.ndarray
    stop: np.ndarray


def _expansion(index: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """How a nearest resize's (n,) index map into an axis of ``size`` grid lines expands them.

    Returns:
        used: the grid lines the map uses, ascending.
        first: (len(used),) the first output position of each used line.
        width: (len(used),) how many output positions each used line becomes.
    """
    if index.ndim != 1 or not len(index) or index[0] < 0 or index[-1] >= size or np.any(
            index[1:] < index[:-1]):
        raise ValueError("index maps must be non-empty, non-decreasing indices into the grid")
    first = np.flatnonzero(np.r_[True, index[1:] != index[:-1]])
    return index[first], first, np.diff(np.r_[first, len(index)])


def _label_runs(label_map: np.ndarray, n_labels: int, rows: np.ndarray | None = None,
                cols: np.ndarray | None = None) -> _Runs:
    """Find the runs of an (H, W) map once, keep those of labels 0..n_labels-1, group by label.

    The map is ``label_map[rows[:, None], cols[None, :]]`` when the index maps are given (a
    nearest resize of a grid), and is never built: each vertical change of the grid (restricted
    to the lines the maps use, so each line becomes at least one output line) becomes one change
    per output column of its grid column, at the output row where its grid row begins.

    The map is not transposed: a column-major run changes value either inside a column (a
    vertical difference) or between the bottom of one column and the top of the next.
    """
    grid = label_map
    height, width = label_map.shape if rows is None else (len(rows), len(cols))
    if grid.size == 0 or height * width == 0:
        empty = np.zeros(0, np.int64)
        return _Runs(empty, empty, empty)
    row_first = col_first = col_width = None
    if rows is not None:
        used_rows, row_first, _ = _expansion(rows, grid.shape[0])
        used_cols, col_first, col_width = _expansion(cols, grid.shape[1])
        if len(used_rows) < grid.shape[0]:
            grid = grid[used_rows]
        if len(used_cols) < grid.shape[1]:
            grid = grid[:, used_cols]
    below, col = np.divmod(np.flatnonzero(grid[1:] != grid[:-1]), grid.shape[1])
    row = below + 1 if row_first is None else row_first[below + 1]
    if col_first is None:
        vertical = col * height + row
    else:  # repeated over the output columns of each grid column
        repeats = col_width[col]
        vertical = np.repeat(col_first[col] * height + row, repeats)
        vertical += height * (np.arange(len(vertical))
                              - np.repeat(np.cumsum(repeats) - repeats, repeats))
    top, bottom = grid[0], grid[-1]
    if col_first is not None:
        top, bottom = np.repeat(top, col_width), np.repeat(bottom, col_width)
    next_cols = np.flatnonzero(top[1:] != bottom[:-1]) + 1
    changes = _column_major(np.concatenate((next_cols * height, vertical)),
                            np.concatenate((next_cols, vertical // height)), width)
    starts = np.concatenate(([0], changes)).astype(np.int64)
    stops = np.concatenate((changes, [height * width])).astype(np.int64)
    col_of, row_of = np.divmod(starts, height)
    if rows is not None:
        row_of, col_of = rows[row_of], cols[col_of]
    values = label_map[row_of, col_of]
    kept = (values >= 0) & (values < n_labels)
    values, starts, stops = values[kept], starts[kept], stops[kept]
    # Stable sort by label; on 16-bit keys numpy's stable sort is a radix sort.
    key = values.astype(np.int16) if n_labels <= np.iinfo(np.int16).max else values
    order = np.argsort(key, kind="stable")
    return _Runs(values[order].astype(np.int64), starts[order], stops[order])


def _column_major(positions: np.ndarray, columns: np.ndarray, width: int) -> np.ndarray:
    """``positions`` (flat column-major, distinct) in ascending order, given each one's column,
    when they come in row-major order after each column's first row (changes between columns
    first, then the vertical changes row by row): ascending is then a stable sort by column, a
    radix sort on 16-bit keys."""
    if width > np.iinfo(np.int16).max:
        return np.sort(positions)
    return positions[np.argsort(columns.astype(np.int16), kind="stable")]


def _counts(runs: _Runs, n_labels: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Every label's uncompressed RLE counts, concatenated.

    Returns:
        counts: (C,) int64, label 0's counts, then label 1's, ...
        offsets: (n_labels + 1,) int64, label k's counts are ``counts[offsets[k]:offsets[k+1]]``.
    """
    per_label = np.bincount(runs.label, minlength=n_labels)
    first = np.concatenate(([0], np.cumsum(per_label)))  # first run of each label
    rank = np.arange(len(runs.label)) - first[runs.label]
    previous_stop = np.zeros_like(runs.stop)
    previous_stop[1:] = runs.stop[:-1]
    previous_stop[rank == 0] = 0
    last_stop = np.zeros(n_labels, np.int64)
    has_runs = per_label > 0
    last_stop[has_runs] = runs.stop[first[1:][has_runs] - 1]
    # pycocotools ends with the trailing 0s, or with the last 1s when the mask ends set.
    trailing = (last_stop < size) | ~has_runs
    offsets = np.concatenate(([0], np.cumsum(2 * per_label + trailing)))
    counts = np.empty(offsets[-1], np.int64)
    at = offsets[runs.label] + 2 * rank
    counts[at] = runs.start - previous_stop
    counts[at + 1] = runs.stop - runs.start
    counts[offsets[:-1][trailing] + 2 * per_label[trailing]] = size - last_stop[trailing]
    return counts, offsets


def _compress(counts: np.ndarray, offsets: np.ndarray) -> tuple[bytes, np.ndarray]:
    """The compressed string form of concatenated counts.

    Returns:
        text: all labels' strings, concatenated (ASCII).
        char_offsets: (n_labels + 1,) int64, label k's string is ``text[char_offsets[k]:...]``.
    """
    values = counts.copy()
    values[3:] -= counts[1:-2]  # from each label's fourth count on: minus the count two before
    for first in range(3):  # each label's first three counts stand as they are
        at = offsets[:-1] + first
        at = at[at < offsets[1:]]
        values[at] = counts[at]
    groups = _groups(values)
    ends = np.cumsum(groups)
    owner = np.repeat(np.arange(len(values)), groups)
    position = np.arange(ends[-1] if len(ends) else 0) - (ends - groups)[owner]
    chars = (values[owner] >> (_GROUP_BITS * position)) & 0x1F
    chars |= np.where(position < groups[owner] - 1, 0x20, 0)
    chars += _ALPHABET_START
    char_offsets = np.concatenate(([0], ends))[offsets]
    return chars.astype(np.uint8).tobytes(), char_offsets


def _groups(values: np.ndarray) -> np.ndarray:
    """(C,) int64 characters of each value: g groups of 5 bits hold -2**(5g-1) <= v < 2**(5g-1),
    so ``v`` needs ``bits // 5 + 1``, ``bits`` the bit length of ``v`` (of ``~v`` when negative),
    read off the float64 exponent (exact: counts stay below 2**53)."""
    magnitude = np.where(values < 0, ~values, values)
    return np.frexp(magnitude.astype(np.float64))[1].astype(np.int64) // _GROUP_BITS + 1


def _areas_and_boxes(runs: _Runs, n_labels: int,
                     height: int | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per label: the pixel count and the ``[x, y, w, h]`` box of its runs (zeros when empty).

    ``height`` is the map's height, or (R,) the height of each run's mask.
    """
    areas = _sums(runs.label, runs.stop - runs.start, n_labels)
    boxes = np.zeros((n_labels, 4), np.int64)
    if not len(runs.label):
        return areas, boxes
    x_first, y_first = np.divmod(runs.start, height)
    x_last, y_last = np.divmod(runs.stop - 1, height)
    wraps = x_last > x_first  # a run over a column boundary covers every row
    y_first = np.where(wraps, 0, y_first)
    y_last = np.where(wraps, height - 1, y_last)
    group_starts = np.flatnonzero(np.r_[True, runs.label[1:] != runs.label[:-1]])
    present = runs.label[group_starts]
    x_min = np.minimum.reduceat(x_first, group_starts)
    x_max = np.maximum.reduceat(x_last, group_starts)
    y_min = np.minimum.reduceat(y_first, group_starts)
    y_max = np.maximum.reduceat(y_last, group_starts)
    boxes[present] = np.stack([x_min, y_min, x_max - x_min + 1, y_max - y_min + 1], axis=1)
    return areas, boxes


def _sums(groups: np.ndarray, values: np.ndarray, n_groups: int) -> np.ndarray:
    """(n_groups,) int64 sums of ``values`` per group (exact below 2**53, pixel counts are)."""
    return np.bincount(groups, weights=values, minlength=n_groups).astype(np.int64)


def encode_label_map(label_map: np.ndarray, n_labels: int, rows: np.ndarray | None = None,
                     cols: np.ndarray | None = None) -> list[EncodedMask]:
    """Encode each label value 0..n_labels-1 of an (H, W) integer map as one RLE mask.

    Pixels with values outside 0..n_labels-1 (``-1``: no annotation) belong to no mask. Labels
    that occupy no pixel still get an entry (area 0), so index k always describes label k.

    With ``rows`` (H,) and ``cols`` (W,), non-decreasing indices into ``label_map`` (an (h, w)
    grid), the map encoded is ``label_map[rows[:, None], cols[None, :]]`` (a nearest resize of
    the grid, :meth:`labeler.methods.base.ImageLabels.resized`), read from the grid: the cost
    follows the grid and the number of runs, not H * W.
    """
    if label_map.ndim != 2:
        raise ValueError(f"label_map must be (H, W), got {label_map.shape}")
    if (rows is None) != (cols is None):
        raise ValueError("rows and cols are given together or not at all")
    height, width = label_map.shape if rows is None else (len(rows), len(cols))
    runs = _label_runs(label_map, n_labels, rows, cols)
    counts, offsets = _counts(runs, n_labels, height * width)
    text, char_offsets = _compress(counts, offsets)
    areas, boxes = _areas_and_boxes(runs, n_labels, height)
    strings = text.decode("ascii")
    bbox_values = boxes.astype(np.float64).tolist()
    return [
        EncodedMask(
            counts=strings[char_offsets[label] : char_offsets[label + 1]],
            height=height,
            width=width,
            area=int(area),
            bbox=bbox_values[label],
        )
        for label, area in enumerate(areas.tolist())
    ]


def encode_mask(mask: np.ndarray) -> dict:
    """The COCO ``segmentation`` (compressed RLE, string counts) of one (H, W) boolean mask."""
    label_map = np.where(np.asarray(mask, dtype=bool), 0, -1).astype(np.int8)
    return encode_label_map(label_map, 1)[0].segmentation()


def decode_mask(segmentation: dict) -> np.ndarray:
    """The (H, W) uint8 0/1 mask of a COCO RLE ``segmentation``.

    ``counts`` may be the compressed string (``str`` or ``bytes``) or the uncompressed list of
    run lengths (COCO's ``iscrowd`` ground truth).
    """
    height, width = (int(v) for v in segmentation["size"])
    counts = segmentation["counts"]
    if isinstance(counts, list):
        rle = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    else:
        rle = {"size": [height, width],
               "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return mask_utils.decode(rle)


class CountsError(ValueError):
    """A compressed RLE string that is not well formed (a value's groups run past its end)."""


def decode_counts(strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The uncompressed run lengths of many compressed RLE strings, decoded together.

    The inverse of the string form written by :func:`encode_label_map` (and pycocotools),
    vectorised over all strings: no mask is built, so the cost follows the string lengths.

    Returns:
        counts: (C,) int64, string 0's run lengths, then string 1's, ... (0-runs first).
        offsets: (len(strings) + 1,) int64, string k's are ``counts[offsets[k]:offsets[k+1]]``.

    Raises:
        CountsError: a string ends inside a value (its last character has the "more" bit).
    """
    lengths = np.fromiter((len(s) for s in strings), np.int64, len(strings))
    chars = np.frombuffer("".join(strings).encode("ascii"), np.uint8).astype(np.int64)
    chars -= _ALPHABET_START
    more = (chars & 0x20) != 0
    string_end = np.cumsum(lengths)
    if len(chars) and np.any(more[string_end[lengths > 0] - 1]):
        raise CountsError("a compressed RLE string ends inside a value")
    last = np.flatnonzero(~more)  # the last character of each value
    value_start = np.concatenate(([0], last[:-1] + 1)) if len(last) else last
    owner = np.repeat(np.arange(len(last)), last - value_start + 1)
    position = np.arange(len(chars)) - value_start[owner]
    terms = (chars & 0x1F) << (_GROUP_BITS * position)
    values = np.add.reduceat(terms, value_start) if len(last) else np.zeros(0, np.int64)
    sign = (chars[last] & 0x10) != 0
    values[sign] |= -1 << (_GROUP_BITS * (last - value_start + 1))[sign]
    # each string's values: those whose last character lies before the string's end
    offsets = np.concatenate(([0], np.searchsorted(last, string_end - 1, side="right")))
    return _undelta(values, offsets), offsets.astype(np.int64)


def _undelta(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Undo the string form's differences: ``count[i] = value[i] + count[i-2]`` for i > 2.

    Each string's counts of one parity form a chain from index 1 (odd) or 2 (even); along the
    whole array the positions of one parity are summed once, and each count subtracts the
    running sum just before its chain began.
    """
    running = np.empty_like(values)
    running[0::2] = np.cumsum(values[0::2])
    running[1::2] = np.cumsum(values[1::2])
    string = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    first = offsets[:-1][string]  # each element's string start
    odd = (np.arange(len(values)) - first) & 1
    before_chain = first - odd  # the position two before the chain's first (index 2 - odd)
    counts = running - np.where(before_chain >= 0, running[np.maximum(before_chain, 0)], 0)
    heads = offsets[:-1][np.diff(offsets) > 0]
    counts[heads] = values[heads]  # index 0: no chain
    return counts


def runs_summary(counts: np.ndarray, offsets: np.ndarray,
                 heights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per mask, from its run lengths alone: the pixels covered, the foreground, and the bbox.

    Args:
        counts, offsets: from :func:`decode_counts`.
        heights: (M,) each mask's height (runs are column-major).

    Returns:
        total: (M,) int64, the sum of the run lengths (must be H * W).
        area: (M,) int64, the foreground pixels (the odd runs).
        bbox: (M, 4) int64 ``[x, y, w, h]`` of the foreground; zeros when empty.
    """
    n_masks = len(offsets) - 1
    mask = np.repeat(np.arange(n_masks), np.diff(offsets))
    total = _sums(mask, counts, n_masks)
    ends = np.cumsum(counts)
    ends -= np.concatenate(([0], ends))[offsets[:-1]][mask]  # restart per mask
    odd = ((np.arange(len(counts)) - offsets[:-1][mask]) % 2 == 1) & (counts > 0)
    runs = _Runs(mask[odd], ends[odd] - counts[odd], ends[odd])
    area, bbox = _areas_and_boxes(runs, n_masks, heights[runs.label])
    return total, area, bbox
