"""The run-based relabelling gives the bits of the former per-cell one (kept here as the oracle).

``labeler.methods.base._compact`` relabels and scores per run of equal values along the rows;
the former code (below, unchanged but for its names) worked per cell. Every output must be
identical: the compact map, its dtype, the categories and the scores, bit for bit, on random
maps (holes, values below -1, huge sparse values, labels that cover no pixel after a
downscale), confidences whose sums are exact or not (float16/32/64, tiny values, zeros), with
and without a resize to the image.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from labeler.methods.base import _compact, _sums_are_exact
from labeler.methods.label_maps import axis_weights, resize_labels


def former_compact(label_map, confidence, weights, category_of):
    """The former relabelling (before runs): a lookup table over every cell, the confidence
    summed per cell in 4 interleaved lanes when the sums are exact, sequentially otherwise.
    Arguments and results as ``labeler.methods.base._compact``'s."""
    lanes = _FORMER_LANES if _sums_are_exact(confidence, weights) else 1
    bins, shift, bin_values, table_size = _former_bins(label_map, lanes)
    if weights is None:
        pixels = _former_lane_totals(np.bincount(bins, minlength=lanes * table_size), lanes)
    else:
        pixels = _former_weighted_pixels(label_map, bins, lanes, weights, table_size)
    if shift:
        pixels[0] = 0
    present = np.flatnonzero(pixels)
    score_weights = confidence.astype(np.float64).ravel()
    if weights is not None:
        score_weights *= np.multiply.outer(*(w.astype(np.float64) for w in weights)).ravel()
    sums = _former_lane_totals(np.bincount(bins, weights=score_weights, minlength=lanes * table_size),
                        lanes)[present]
    scores = np.clip(sums / np.maximum(pixels[present], 1), 0.0, 1.0)
    if not shift and len(present) == table_size:  # the values are 0..L-1 already
        compact = label_map.astype(np.int32)
    else:
        lookup = np.full(table_size, -1, np.int32)
        lookup[present] = np.arange(len(present), dtype=np.int32)
        compact = np.repeat(lookup, lanes)[bins].reshape(label_map.shape)
    values = (present if bin_values is None else bin_values[present]) - shift
    categories = np.ones(len(values), np.int64) if category_of is None else category_of[values]
    return compact, categories.astype(np.int64), scores


def _former_bins(label_map: np.ndarray, lanes: int) -> tuple[np.ndarray, int, np.ndarray | None, int]:
    """The (h * w,) intp bin of each cell, times ``lanes`` plus the cell's lane (cell i adds
    into accumulator ``i % lanes`` of its bin).

    Returns:
        bins, shift, values, table_size: bin b (< table_size) holds the label value
        ``b - shift`` (``values[b] - shift`` when the values were ranked: huge values, so the
        tables stay the size of the map); with shift 1, bin 0 collects the cells without
        annotation (negative values).
    """
    size = label_map.size
    low, high = (int(label_map.min()), int(label_map.max())) if size else (0, 0)
    bins = np.empty(label_map.shape, np.intp)
    values = None
    if high + 1 > max(size, 1 << 16):
        np.maximum(label_map, -1, out=bins, casting="unsafe")
        values, bins = np.unique(bins.ravel() + 1, return_inverse=True)
        if values[0] != 0:
            values, bins = np.concatenate(([0], values)), bins + 1
        shift = 1
        bins *= lanes
    elif low >= 0:  # every cell has a label
        shift = 0
        np.multiply(label_map, lanes, out=bins, casting="unsafe")
    else:
        shift = 1
        np.maximum(label_map, -1, out=bins, casting="unsafe")
        bins += 1
        bins *= lanes
    bins = bins.ravel()
    if lanes > 1:
        for start in range(0, size, len(_FORMER_LANE_OF)):  # a cache-sized pattern at a time
            chunk = bins[start:start + len(_FORMER_LANE_OF)]
            chunk += _FORMER_LANE_OF[:len(chunk)]
    table_size = len(values) if values is not None else max(high, -1) + shift + 1
    return bins, shift, values, table_size


def _former_weighted_pixels(label_map: np.ndarray, bins: np.ndarray, lanes: int,
                     weights: tuple[np.ndarray, np.ndarray], table_size: int) -> np.ndarray:
    """(table_size,) pixels per bin, exact: from the map's runs along its rows (each run's
    pixels: its row's weight times its columns' weights; integers, so float64 sums are exact in
    any order), which costs one comparison over the map instead of a weighted pass.

    Args:
        label_map: (h, w); its runs are runs of one bin (two negative values, one bin, make two
            runs whose pixels add up the same).
        bins: (h * w,) the bin of each cell times ``lanes`` plus its lane.
    """
    if not bins.size:
        return np.zeros(table_size)
    row_weights, col_weights = weights
    height, width = label_map.shape
    new_run = np.empty((height, width), bool)
    new_run[:, 0] = True
    np.not_equal(label_map[:, 1:], label_map[:, :-1], out=new_run[:, 1:])
    starts = np.flatnonzero(new_run)
    lengths = np.diff(np.append(starts, height * width))  # runs end at their row's end
    row, col = np.divmod(starts, width)
    col_edges = np.concatenate(([0], np.cumsum(col_weights)))
    run_pixels = row_weights[row] * (col_edges[col + lengths] - col_edges[col])
    return np.bincount(bins[starts] // lanes, weights=run_pixels, minlength=table_size)


#: Accumulators per bin when every sum is exact: consecutive cells of one label then add into
#: different accumulators, so the additions do not wait for each other (about 2x faster).
_FORMER_LANES = 4
#: i % _FORMER_LANES for a block of cells (a multiple of _FORMER_LANES long)
_FORMER_LANE_OF = np.arange(1 << 15, dtype=np.intp) % _FORMER_LANES


def _former_lane_totals(per_lane: np.ndarray, lanes: int) -> np.ndarray:
    """Per bin, the sum of its ``lanes`` accumulators (``per_lane`` is bin-major)."""
    if lanes == 1:
        return per_lane
    return per_lane.reshape(-1, lanes).sum(axis=1)


def weights_for(grid: tuple[int, int], size: tuple[int, int] | None):
    if size is None or size == grid:
        return None
    return axis_weights(size[0], grid[0]), axis_weights(size[1], grid[1])


def assert_same(label_map, confidence, size=None, category_of=None):
    weights = weights_for(label_map.shape, size)
    new = _compact(label_map, confidence, weights, category_of)
    former = former_compact(label_map, confidence, weights, category_of)
    for got, expected in zip(new, former, strict=True):
        assert got.dtype == expected.dtype and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)
        assert got.tobytes() == expected.tobytes()  # the scores' bits, too


def voronoi(rng, height, width, segments):
    centres = rng.random((segments, 2)) * (height, width)
    y, x = np.mgrid[0:height, 0:width]
    distance = (y[None] - centres[:, :1, None]) ** 2 + (x[None] - centres[:, 1:, None]) ** 2
    return np.argmin(distance + rng.random((segments, 1, 1)) * height * width / segments,
                     axis=0).astype(np.int32)


def confidences(rng, shape, segments):
    winners = (1 / segments + (1 - 1 / segments) * rng.random(shape)).astype(np.float32)
    return [winners, rng.random(shape).astype(np.float32), winners.astype(np.float64),
            winners.astype(np.float16), np.where(rng.random(shape) < 0.3, 0, winners),
            np.zeros(shape, np.float32), rng.random(shape)]  # the last: 53-bit values, rounding


@pytest.mark.parametrize("seed", range(10))
def test_runs_give_the_former_bits(seed):
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 60)), int(rng.integers(1, 60)))
    segments = int(rng.integers(1, 12))
    blocky = resize_labels(rng.integers(-1, segments, size=(max(1, shape[0] // 4),
                                                              max(1, shape[1] // 4))), *shape)
    maps = [voronoi(rng, *shape, segments), blocky.astype(np.int32), np.maximum(blocky, 0) * 3,
            np.where(blocky < 0, -5, blocky).astype(np.int64), blocky.astype(np.int16)]
    sizes = [None, (shape[0] * 3 + 1, shape[1] * 2), (max(1, shape[0] // 3), shape[1] + 7),
             (int(rng.integers(1, 200)), int(rng.integers(1, 200)))]
    category_of = np.arange(3 * segments + 1, dtype=np.int64) * 7 + 2
    for label_map, confidence, size in itertools.product(
            maps, confidences(rng, shape, segments), sizes):
        assert_same(label_map, confidence, size, category_of if seed % 2 else None)


def test_runs_give_the_former_bits_at_the_bench_size():
    """A 1024x768 map of 30 Voronoi regions with winner shares: the worker's common case."""
    rng = np.random.default_rng(7)
    label_map = voronoi(rng, 96, 128, 30)
    label_map = resize_labels(label_map, 768, 1024).astype(np.int32)
    winners = confidences(rng, (768, 1024), 30)[0]
    assert _sums_are_exact(winners, None)
    assert_same(label_map, winners)
    assert_same(label_map, winners, (3024, 4032))
    assert_same(label_map, rng.random((768, 1024)))  # 53-bit values: sequential sums


def test_huge_values_empty_maps_and_maps_without_labels():
    rng = np.random.default_rng(3)
    huge = rng.choice(np.array([-1, 7, 2**20, 2**40]), size=(9, 11))
    confidence = rng.random((9, 11)).astype(np.float32)
    for size in (None, (20, 5)):
        assert_same(huge, confidence, size)
        assert_same(np.full((4, 6), -1, np.int32), np.ones((4, 6), np.float32), size)
        assert_same(np.full((4, 6), -3, np.int64), np.ones((4, 6)), size)
    assert_same(np.zeros((0, 5), np.int32), np.zeros((0, 5), np.float32))


def test_one_column_and_one_row_maps():
    """Runs end at each row's end: a one-column map has one run per cell."""
    rng = np.random.default_rng(11)
    column = rng.integers(-1, 3, size=(40, 1))
    for label_map in (column, column.T, np.ones((1, 1), np.int32)):
        confidence = rng.random(label_map.shape).astype(np.float32)
        for size in (None, (label_map.shape[0] * 2, label_map.shape[1] + 3)):
            assert_same(label_map, confidence, size)
