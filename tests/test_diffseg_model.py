"""DiffSeg on the tiny model: segments follow flat-coloured regions, at original resolution."""

from __future__ import annotations

import numpy as np
import pytest

from labeler.methods.diffseg.algorithm import DiffSegOptions, segment_attention
from labeler.methods.diffseg.segmenter import DiffSeg
from tests.helpers import flat_regions_image


def purity(regions: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of pixels whose segment's majority region is their own region."""
    agreeing = sum(np.bincount(regions[labels == label]).max() for label in np.unique(labels))
    return agreeing / regions.size


@pytest.fixture(scope="module")
def images_and_attention(tiny_backbone):
    quadrants = flat_regions_image(256, 256, "quadrants")
    halves = flat_regions_image(200, 300, "halves")
    diffseg = DiffSeg(tiny_backbone)
    attention = diffseg.attention_maps([quadrants[0], halves[0]])
    yield diffseg, [quadrants, halves], attention
    diffseg.close()


def test_attention_is_captured_at_four_resolutions(images_and_attention):
    _, _, attention = images_and_attention
    assert {side: tuple(maps.shape) for side, maps in attention.items()} == {
        64: (2, 4096, 4096),
        32: (2, 1024, 1024),
        16: (2, 256, 256),
        8: (2, 64, 64),
    }


def test_segments_follow_flat_colour_regions(images_and_attention):
    # Measured on the tiny model: pure segments at both thresholds (purity 1.0), and at the
    # default 1.1 one segment per flat region (4 quadrants, 2 halves); a pipeline that scrambles
    # query order or ignores the image drops far lower.
    _, images, attention = images_and_attention
    counts = {}
    for index, (image, regions) in enumerate(images):
        single = {side: maps[index : index + 1] for side, maps in attention.items()}
        for tau in (0.1, 1.1):
            labels, _ = segment_attention(single, regions.shape, DiffSegOptions(kl_threshold=tau))
            labels = labels[0].numpy()
            counts[index, tau] = len(np.unique(labels))
            assert purity(regions, labels) > 0.95
            assert 2 <= counts[index, tau] < 100
        assert counts[index, 1.1] <= counts[index, 0.1]
        assert counts[index, 1.1] == len(np.unique(regions))


def test_scrambled_attention_loses_the_regions(images_and_attention):
    # Same maps with pixel identities shuffled: the merge still groups pixels of one colour, but
    # the segments land on shuffled positions, so they no longer follow the image's regions.
    _, images, attention = images_and_attention
    _, regions = images[0]
    generator = np.random.default_rng(0)
    scrambled = {}
    for side, maps in attention.items():
        order = generator.permutation(side * side)
        scrambled[side] = maps[:1][:, order][:, :, order]
    labels, _ = segment_attention(scrambled, regions.shape, DiffSegOptions())
    real, _ = segment_attention({s: m[:1] for s, m in attention.items()}, regions.shape,
                                DiffSegOptions())
    # Measured: purity 1.0 (real), 0.25 (scrambled).
    assert purity(regions, real[0].numpy()) > 0.95
    assert purity(regions, labels[0].numpy()) < 0.7


def test_label_method_returns_original_resolution_labels(images_and_attention):
    diffseg, images, _ = images_and_attention
    results = diffseg.label([images[1][0]])
    (result,) = results
    assert result.label_map.shape == (200, 300)
    n_labels = len(result.category_ids)
    assert set(np.unique(result.label_map)) == set(range(n_labels))
    assert np.all((result.scores > 0) & (result.scores <= 1))
    assert set(result.category_ids) == {1}
    assert set(diffseg.timer.seconds) >= {
        "vae_encode",
        "unet_capture",
        "aggregate",
        "merge",
        "labeling",
    }


def test_batched_and_single_image_labels_agree(tiny_backbone):
    diffseg = DiffSeg(tiny_backbone, DiffSegOptions(kl_threshold=0.5))
    first, _ = flat_regions_image(128, 160, "quadrants")
    second, _ = flat_regions_image(96, 96, "halves")
    batched = diffseg.label([first, second])
    alone = diffseg.label([second])
    diffseg.close()
    np.testing.assert_array_equal(batched[1].label_map, alone[0].label_map)
