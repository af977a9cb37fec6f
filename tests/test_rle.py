"""The one-pass encoder against pycocotools' per-label encoding, byte for byte."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from labeler.output.rle import encode_label_map


def per_label_pycocotools(label_map: np.ndarray, n_labels: int) -> list[tuple]:
    """The oracle: one full-image comparison and one pycocotools encode per label."""
    encoded = []
    for label in range(n_labels):
        rle = mask_utils.encode(np.asfortranarray(label_map == label, dtype=np.uint8))
        encoded.append((
            rle["counts"].decode("ascii"),
            [int(v) for v in rle["size"]],
            int(mask_utils.area(rle)),
            [float(v) for v in mask_utils.toBbox(rle)],
        ))
    return encoded


def assert_identical(label_map: np.ndarray, n_labels: int) -> None:
    masks = encode_label_map(label_map, n_labels)
    got = [(m.counts, [m.height, m.width], m.area, m.bbox) for m in masks]
    expected = per_label_pycocotools(label_map, n_labels)
    assert len(got) == len(expected) == n_labels
    for label, (mine, theirs) in enumerate(zip(got, expected)):
        assert mine == theirs, f"label {label}"
        assert isinstance(masks[label].area, int)
        assert all(isinstance(v, float) for v in masks[label].bbox)


def voronoi(height: int, width: int, segments: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.integers(0, [height, width], size=(segments, 2))
    y, x = np.mgrid[0:height, 0:width]
    distance = np.stack([(y - cy) ** 2 + (x - cx) ** 2 for cy, cx in centres])
    return distance.argmin(0).astype(np.int32)


@pytest.mark.parametrize("seed", range(6))
def test_random_maps_match_pycocotools(seed):
    rng = np.random.default_rng(seed)
    height, width = rng.integers(1, 80, size=2)
    n_labels = int(rng.integers(1, 12))
    label_map = rng.integers(-1, n_labels + 2, size=(height, width)).astype(np.int32)
    assert_identical(label_map, n_labels)  # values >= n_labels, like -1, belong to no mask


@pytest.mark.parametrize("seed", range(3))
def test_region_maps_with_holes_and_background_match(seed):
    label_map = voronoi(97, 131, 25, seed)
    label_map[20:40, 30:70] = -1  # a hole of background
    label_map[50:55, 10:12] = 3  # islands of a label inside others
    label_map[80:, 100:] = 24
    assert_identical(label_map, 30)  # labels 25..29 absent


@pytest.mark.parametrize(
    "shape", [(1, 1), (1, 17), (17, 1), (2, 2), (1, 1000), (1000, 1), (3, 500)]
)
def test_degenerate_shapes_match(shape):
    rng = np.random.default_rng(sum(shape))
    for n_labels in (1, 2, 3):
        label_map = rng.integers(-1, n_labels, size=shape).astype(np.int32)
        assert_identical(label_map, n_labels)
    assert_identical(np.zeros(shape, np.int32), 2)  # one label everywhere, one absent
    assert_identical(np.full(shape, -1, np.int32), 1)  # nothing labeled
    assert encode_label_map(np.full(shape, -1, np.int32), 0) == []  # no labels at all


def test_checkerboards_match():
    y, x = np.mgrid[0:63, 0:64]
    assert_identical(((y + x) % 2).astype(np.int32), 2)
    assert_identical(((y // 3 + x // 5) % 4).astype(np.int32), 4)
    assert_identical(np.where((y + x) % 2 == 0, -1, 0).astype(np.int32), 1)


def test_4096_labels_match():
    label_map = np.arange(64 * 64, dtype=np.int32).reshape(64, 64)
    assert_identical(label_map, 4096)
    shuffled = np.random.default_rng(0).permutation(label_map.ravel()).reshape(64, 64)
    shuffled[shuffled % 7 == 0] = -1
    assert_identical(shuffled, 4096)


def test_long_runs_need_multi_character_deltas():
    # Counts and their deltas up to a million pixels, both signs: 4-5 characters each.
    label_map = np.zeros((1200, 1100), np.int32)
    label_map[:, 700:] = 1
    label_map[3:5, 0] = 2
    label_map[600:, 1099] = 2
    label_map[10, 350] = 1
    assert_identical(label_map, 3)


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.int64])
def test_other_integer_types_and_layouts_match(dtype):
    label_map = voronoi(40, 33, 9, 1).astype(dtype)
    assert_identical(label_map, 9)
    assert_identical(np.asfortranarray(label_map), 9)
    assert_identical(label_map[::2, ::3], 9)  # a strided view


def test_a_map_that_is_not_two_dimensional_is_refused():
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        encode_label_map(np.zeros((2, 3, 1), np.int32), 1)


def test_maps_wider_than_16_bit_columns_match():
    """Beyond 32767 columns the changes are put in column-major order by sorting positions."""
    rng = np.random.default_rng(5)
    label_map = np.repeat(rng.integers(-1, 3, size=(4, 410)), 80, axis=1).astype(np.int32)
    label_map[1, 32767:32770] = 2
    assert label_map.shape[1] > np.iinfo(np.int16).max
    assert_identical(label_map, 3)


def test_characters_per_value_at_every_group_boundary():
    """A value takes g characters when -2**(5g-1) <= v < 2**(5g-1), at both sides of each edge."""
    from labeler.output.rle import _groups

    edges = [1 << (5 * g - 1) for g in range(1, 11)]
    values = sorted({0} | {v + d for e in edges for v in (e, -e) for d in (-1, 0, 1)})
    expected = [next(g for g in range(1, 12) if -(1 << (5 * g - 1)) <= v < 1 << (5 * g - 1))
                for v in values]
    assert _groups(np.array(values, np.int64)).tolist() == expected
