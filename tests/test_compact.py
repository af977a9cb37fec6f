"""Relabelling to 0..L-1 without sorting the map, at full resolution and at the label grid."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from labeler.methods.base import compact_labels, compact_resized_labels
from labeler.methods.device_labels import _compact_on_device, compact_device_labels
from labeler.methods.label_maps import resize_labels, resize_weights


def sorting_compact(label_map, confidence, category_of=None):
    """The oracle: np.unique with inverse over the full-resolution map, as before."""
    valid = label_map >= 0
    present, inverse = np.unique(label_map[valid], return_inverse=True)
    compact = np.full(label_map.shape, -1, dtype=np.int32)
    compact[valid] = inverse
    sums = np.bincount(inverse, weights=confidence[valid].astype(np.float64), minlength=len(present))
    counts = np.bincount(inverse, minlength=len(present))
    scores = np.clip(sums / np.maximum(counts, 1), 0.0, 1.0)
    categories = np.ones(len(present), np.int64) if category_of is None else category_of[present]
    return compact, categories, scores


def random_case(seed: int, shape=None, top: int | None = None):
    rng = np.random.default_rng(seed)
    shape = shape or tuple(rng.integers(1, 60, size=2))
    top = top or int(rng.integers(1, 300))
    values = rng.choice(top, size=min(top, 12), replace=False)
    label_map = rng.choice(np.concatenate(([-1], values)), size=shape).astype(np.int32)
    confidence = rng.random(shape).astype(np.float32)
    return label_map, confidence


@pytest.mark.parametrize("seed", range(8))
def test_full_resolution_compaction_is_identical_to_sorting(seed):
    label_map, confidence = random_case(seed)
    category_of = np.arange(300, dtype=np.int64) * 3 + 1
    for categories in (None, category_of):
        labels = compact_labels(label_map, confidence, categories)
        compact, expected_categories, scores = sorting_compact(label_map, confidence, categories)
        np.testing.assert_array_equal(labels.label_map, compact)
        assert labels.label_map.dtype == np.int32
        np.testing.assert_array_equal(labels.category_ids, expected_categories)
        np.testing.assert_array_equal(labels.scores, scores)  # same sums, same order: bit for bit


def test_huge_sparse_label_values_and_empty_maps():
    label_map = np.array([[2**30, -1], [7, 2**30]], np.int64)
    confidence = np.array([[0.5, 1.0], [0.25, 0.75]])
    labels = compact_labels(label_map, confidence)
    np.testing.assert_array_equal(labels.label_map, [[1, -1], [0, 1]])
    np.testing.assert_allclose(labels.scores, [0.25, 0.625])
    empty = compact_labels(np.full((3, 4), -1, np.int32), np.ones((3, 4)))
    assert len(empty.category_ids) == 0 and (empty.label_map == -1).all()


@pytest.mark.parametrize(
    ("grid", "size"), [((48, 64), (768, 1024)), ((37, 50), (100, 133)), ((5, 1), (17, 3)),
                       ((1, 1), (9, 7)), ((40, 30), (40, 30)), ((30, 20), (21, 13))]
)
def test_grid_compaction_equals_compacting_the_resized_maps(grid, size):
    label_map, confidence = random_case(sum(grid), shape=grid, top=40)
    category_of = np.arange(40, dtype=np.int64) + 5
    labels = compact_resized_labels(label_map, confidence, *size, category_of=category_of)
    compact, categories, scores = sorting_compact(
        resize_labels(label_map, *size), resize_labels(confidence, *size), category_of
    )
    np.testing.assert_array_equal(labels.label_map, compact)
    np.testing.assert_array_equal(labels.category_ids, categories)
    np.testing.assert_allclose(labels.scores, scores, rtol=1e-12, atol=0)


def test_resize_weights_count_the_pixels_each_cell_becomes():
    weights = resize_weights((3, 4), 10, 9)
    index = np.arange(12).reshape(3, 4)
    counted = np.bincount(resize_labels(index, 10, 9).ravel(), minlength=12).reshape(3, 4)
    np.testing.assert_array_equal(weights, counted)
    assert weights.sum() == 90


@pytest.mark.parametrize(("grid", "size"), [((48, 64), (768, 1024)), ((37, 50), (100, 133)),
                                            ((40, 30), (40, 30)), ((30, 20), (21, 13))])
def test_device_compaction_equals_compacting_the_resized_maps(grid, size):
    label_map, confidence = random_case(sum(grid) + 1, shape=grid, top=40)
    category_of = np.arange(40, dtype=np.int64) + 5
    tensors = torch.from_numpy(label_map).long(), torch.from_numpy(confidence)
    compact, categories, scores = sorting_compact(
        resize_labels(label_map, *size), resize_labels(confidence, *size), category_of
    )
    # The public entry (numpy on the host) and its torch path (what runs on an accelerator).
    for labels in (compact_device_labels(*tensors, *size, category_of=category_of),
                   _compact_on_device(*tensors, *size, category_of=category_of)):
        assert labels.label_map.dtype == np.int32
        np.testing.assert_array_equal(labels.label_map, compact)
        np.testing.assert_array_equal(labels.category_ids, categories)
        np.testing.assert_allclose(labels.scores, scores, rtol=1e-12, atol=0)


def test_device_compaction_of_a_map_without_annotations():
    for compact in (compact_device_labels, _compact_on_device):
        labels = compact(torch.full((4, 5), -1), torch.ones(4, 5), 8, 10, None)
        assert len(labels.scores) == 0 and (labels.label_map == -1).all()
        assert labels.label_map.shape == (8, 10)


def sequential_grid_compact(grid, confidence, height, width):
    """The oracle of the scores at the grid: numpy's sequential weighted bincount over the
    cells (the former code), each cell weighted by the pixels it becomes."""
    bins = np.maximum(grid.astype(np.intp).ravel(), -1) + 1
    weights = resize_weights(grid.shape, height, width).astype(np.float64).ravel()
    pixels = np.bincount(bins, weights=weights)
    pixels[0] = 0
    present = np.flatnonzero(pixels)
    sums = np.bincount(bins, weights=confidence.astype(np.float64).ravel() * weights)[present]
    return present - 1, np.clip(sums / np.maximum(pixels[present], 1), 0.0, 1.0)


@pytest.mark.parametrize("seed", range(12))
def test_scores_are_bit_identical_to_the_sequential_sums(seed):
    """Summed in lanes when every sum is exact, sequentially otherwise: the same bits."""
    rng = np.random.default_rng(seed)
    grid = rng.integers(-1, 9, size=(int(rng.integers(1, 70)), int(rng.integers(1, 70))))
    grid = resize_labels(grid, int(rng.integers(20, 300)), int(rng.integers(20, 300)))
    size = (int(rng.integers(1, 400)), int(rng.integers(1, 400)))
    winners = (1 / 9 + (8 / 9) * rng.random(grid.shape)).astype(np.float32)  # exact sums
    confidences = [winners, rng.random(grid.shape).astype(np.float32),  # tiny values: sequential
                   winners.astype(np.float64), winners.astype(np.float16),
                   np.where(rng.random(grid.shape) < 0.3, 0, winners).astype(np.float32)]
    unlabelled, every_cell, gaps = grid, np.maximum(grid, 0), np.maximum(grid, 0) * 2
    below_minus_one = np.where(grid < 0, -3, grid)
    for label_grid, confidence, target in itertools.product(
            (unlabelled, every_cell, gaps, below_minus_one), confidences, (grid.shape, size)):
        labels = compact_resized_labels(label_grid, confidence, *target)
        values, scores = sequential_grid_compact(label_grid, confidence, *target)
        np.testing.assert_array_equal(labels.scores, scores)  # bit for bit
        compact = np.searchsorted(values, label_grid).astype(np.int32)
        compact[label_grid < 0] = -1
        np.testing.assert_array_equal(labels.label_map, resize_labels(compact, *target))


def test_only_exact_sums_are_summed_in_lanes():
    from labeler.methods.base import _sums_are_exact

    winners = np.full((1024, 1024), 1 / 30, np.float32)
    assert _sums_are_exact(winners, None)
    assert not _sums_are_exact(winners.astype(np.float64), None)  # 53-bit values round
    tiny_and_one = np.full((1024, 1024), 1.0, np.float32)
    tiny_and_one[5, 7] = 1e-6  # its bits lie 2**-43 below 1: a 1 Mpx sum would drop them
    assert not _sums_are_exact(tiny_and_one, None)
    assert _sums_are_exact(tiny_and_one[:4, :8], None)  # a small sum keeps them
    assert not _sums_are_exact(np.full((4, 4), np.nan, np.float32), None)
    assert not _sums_are_exact(np.full((4, 4), -0.5, np.float32), None)
    big = (np.ones(1024, np.int64) * 4, np.ones(1024, np.int64) * 4)  # 16 Mpx
    assert _sums_are_exact(np.full((1024, 1024), 0.5, np.float32), big)
    low_and_one = np.full((1024, 1024), 1.0, np.float32)
    low_and_one[0, 0] = 1 / 300  # 16 Mpx of sum: its low bits would round away
    assert not _sums_are_exact(low_and_one, big)
    assert _sums_are_exact(low_and_one, None)  # 1 Mpx: they stay
