"""Labels held at the label grid give the same masks and rows as the full-resolution map.

The reference is the path the worker took before: the compact map nearest-resized to the decoded
size, narrowed, resized again to the stored size, then encoded; the grid path encodes from the
grid and the composed index maps (no full-size map).
"""

from __future__ import annotations

import numpy as np
import pytest

from labeler.methods.base import ImageLabels, compact_resized_labels
from labeler.methods.label_maps import resize_labels
from labeler.output.rle import encode_label_map
from labeler.output.rows import Provenance, labeled_rows


def old_full_map(compact: np.ndarray, decoded: tuple[int, int],
                 stored: tuple[int, int]) -> np.ndarray:
    """The worker's former path: resize to the decoded size, narrow, resize to the stored."""
    full = resize_labels(compact, *decoded)
    if decoded != stored:
        full = resize_labels(full.astype(np.int16), *stored)
    return full


def masks(encoded) -> list[tuple]:
    return [(m.counts, m.height, m.width, m.area, m.bbox) for m in encoded]


def random_map(rng: np.random.Generator, height: int, width: int, n_labels: int) -> np.ndarray:
    """Blocky regions (long runs) with scattered noise, -1 holes and values >= n_labels."""
    coarse = rng.integers(-1, n_labels + 2, size=(max(1, height // 3), max(1, width // 3)))
    grid = resize_labels(coarse, height, width).astype(np.int32)
    noise = rng.random((height, width)) < 0.05
    grid[noise] = rng.integers(-1, n_labels + 2, size=int(noise.sum()))
    return grid


def random_size(rng: np.random.Generator, low: int, high: int) -> tuple[int, int]:
    return int(rng.integers(low, high)), int(rng.integers(low, high))


@pytest.mark.parametrize("seed", range(40))
def test_encoding_from_the_grid_equals_encoding_the_resized_map(seed):
    rng = np.random.default_rng(seed)
    grid_size = random_size(rng, 1, 40)
    n_labels = int(rng.integers(1, 9))
    grid = random_map(rng, *grid_size, n_labels)
    # up, down, odd ratios, one axis unchanged, then a second resize as the worker composes
    decoded = (grid_size[0] * int(rng.integers(1, 4)) + int(rng.integers(-1, 3)),
               max(1, grid_size[1] + int(rng.integers(-grid_size[1] + 1, 50))))
    decoded = (max(1, decoded[0]), decoded[1])
    stored = random_size(rng, 1, 130) if seed % 2 else decoded
    labels = ImageLabels(grid, np.ones(n_labels, np.int64), np.ones(n_labels))
    resized = labels.resized(*decoded).resized(*stored)
    assert resized.shape == stored
    expected = old_full_map(grid, decoded, stored)
    np.testing.assert_array_equal(resized.label_map, expected)
    got = encode_label_map(resized.grid, n_labels, resized.rows, resized.cols)
    assert masks(got) == masks(encode_label_map(expected, n_labels))


@pytest.mark.parametrize("grid_size,size", [((1, 1), (7, 5)), ((1, 9), (4, 31)), ((9, 1), (31, 2)),
                                            ((6, 6), (1, 1)), ((5, 8), (3, 2)), ((64, 64), (480, 640)),
                                            ((768, 1024), (3024, 4032))])
def test_degenerate_and_photo_ratios(grid_size, size):
    rng = np.random.default_rng(sum(size))
    grid = random_map(rng, *grid_size, 30)
    labels = ImageLabels(grid, np.ones(30, np.int64), np.ones(30)).resized(*size)
    expected = resize_labels(grid, *size)
    got = encode_label_map(labels.grid, 30, labels.rows, labels.cols)
    assert masks(got) == masks(encode_label_map(expected, 30))


@pytest.mark.parametrize("seed", range(8))
def test_rows_of_grid_labels_equal_rows_of_the_full_map(seed):
    """What the worker commits: image and annotation rows, compacted and scored on the grid."""
    rng = np.random.default_rng(100 + seed)
    grid_size = random_size(rng, 2, 50)
    size = random_size(rng, 2, 160)
    grid = random_map(rng, *grid_size, 12)
    confidence = rng.random(grid_size).astype(np.float32)
    category_of = rng.integers(1, 4, size=14)
    labels = compact_resized_labels(grid, confidence, *size, category_of=category_of)
    full = ImageLabels(labels.label_map.copy(), labels.category_ids, labels.scores)
    provenance = Provenance("m", "model", None, "run")
    names = {1: "a", 2: "b", 3: "c"}
    got = labeled_rows("u", 7, size[1], size[0], labels, names, provenance, "s", "f")
    expected = labeled_rows("u", 7, size[1], size[0], full, names, provenance, "s", "f")
    assert got == expected


def test_index_maps_must_be_given_together_and_non_decreasing():
    grid = np.zeros((3, 4), np.int32)
    one = np.ones(1)
    with pytest.raises(ValueError, match="together"):
        ImageLabels(grid, one, one, rows=np.zeros(5, np.int64))
    with pytest.raises(ValueError, match="non-decreasing"):
        ImageLabels(grid, one, one, rows=np.array([0, 2, 1]), cols=np.arange(4))
    with pytest.raises(ValueError, match="non-decreasing"):
        ImageLabels(grid, one, one, rows=np.array([0, 3]), cols=np.arange(4))
    with pytest.raises(ValueError, match="non-decreasing"):
        encode_label_map(grid, 1, np.array([1, 0]), np.arange(4))
