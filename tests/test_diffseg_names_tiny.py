"""DiffSeg naming on the tiny model: colour words name the segments of their colour, abstain on
colours outside the vocabulary (white, grey, black), and never change the segments."""

from __future__ import annotations

import numpy as np
import pytest

from labeler.methods.diffseg.segmenter import DiffSeg
from labeler.methods.diffseg.settings import DiffSegOptions
from labeler.models.tiny.names import COLOUR_NAMES
from labeler.testing.worlds import colour_world

#: Colours no word names (tiny's words cannot say luminance): their segments must abstain.
OUTSIDE = {"white": (240, 240, 235), "grey": (128, 128, 128), "black": (25, 25, 30)}
VOCABULARY = list(COLOUR_NAMES)
NAMES = [*VOCABULARY, *OUTSIDE]
COLOURS = np.array([*COLOUR_NAMES.values(), *OUTSIDE.values()])
PURE = 0.8
SIZE = 160  # images are resized to the model's 512 anyway; a small label grid keeps it cheap


def worlds(count: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` colour worlds that hold an outside colour (so abstention is tested)."""
    rng = np.random.default_rng(seed)
    found = []
    while len(found) < count:
        image, colour = colour_world(rng, COLOURS, SIZE)
        if (colour >= len(VOCABULARY)).mean() > 0.05:
            found.append((image, colour))
    return found


def tally(labels, colour: np.ndarray, categories: list[dict]) -> dict[str, int]:
    """Segments by outcome. A segment is judged by its majority colour when at least
    :data:`PURE` of its pixels have it (DiffSeg on tiny sometimes merges two small shapes; such a
    segment has no one right name and counts as ``mixed``): named right/wrong (vocabulary
    colours; abstaining counts as wrong), and for the outside colours abstained (``segment``) or
    named."""
    names = {c["id"]: c["name"] for c in categories}
    counts = dict.fromkeys(("right", "wrong", "abstained", "named_outside", "mixed"), 0)
    for label, category in enumerate(labels.category_ids):
        pixels = np.bincount(colour[labels.label_map == label], minlength=len(NAMES))
        if pixels.max() < PURE * pixels.sum():
            counts["mixed"] += 1
            continue
        truth, given = NAMES[int(pixels.argmax())], names[int(category)]
        if truth in OUTSIDE:
            counts["abstained" if given == "segment" else "named_outside"] += 1
        else:
            counts["right" if given == truth else "wrong"] += 1
    return counts


@pytest.fixture(scope="module")
def runs(tiny_backbone):
    """Two worlds named in one batch, the second alone, and the second without names."""
    images = [image for image, _ in worlds(2, seed=0)]
    named = DiffSeg(tiny_backbone, DiffSegOptions(names=VOCABULARY))
    try:
        together = named.label(images)
        alone = named.label(images[1:])
    finally:
        named.close()
    plain = DiffSeg(tiny_backbone)
    try:
        unnamed = plain.label(images[1:])
    finally:
        plain.close()
    return named.categories, together, alone[0], unnamed[0]


def test_names_leave_the_segments_as_they_are(runs):
    _, together, _, unnamed = runs
    np.testing.assert_array_equal(together[1].label_map, unnamed.label_map)
    np.testing.assert_allclose(together[1].scores, unnamed.scores, rtol=0, atol=1e-6)
    assert unnamed.name_scores is None


def test_colour_words_name_their_segments_and_abstain_outside_the_vocabulary(runs):
    categories, together, _, _ = runs
    assert [c["name"] for c in categories] == [*VOCABULARY, "segment"]
    counts = dict.fromkeys(("right", "wrong", "abstained", "named_outside", "mixed"), 0)
    for labels, (_, colour) in zip(together, worlds(2, seed=0)):
        assert labels.name_scores is not None and ((0 <= labels.name_scores) & (labels.name_scores <= 1)).all()
        for key, value in tally(labels, colour, categories).items():
            counts[key] += value
    assert counts["right"] >= 0.9 * (counts["right"] + counts["wrong"]), counts
    assert counts["abstained"] >= 1 and counts["named_outside"] == 0, counts


def test_naming_is_unchanged_by_batching(runs):
    _, together, alone, _ = runs
    np.testing.assert_array_equal(together[1].label_map, alone.label_map)
    np.testing.assert_array_equal(together[1].category_ids, alone.category_ids)
    np.testing.assert_allclose(together[1].name_scores, alone.name_scores, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_learning_figures_on_twelve_worlds(tiny_backbone):
    """The learning test's figures (docs/diffseg.md, "Naming"): 12 worlds in batches of 4."""
    data = worlds(12, seed=1)
    named = DiffSeg(tiny_backbone, DiffSegOptions(names=VOCABULARY))
    counts = dict.fromkeys(("right", "wrong", "abstained", "named_outside", "mixed"), 0)
    try:
        for start in range(0, len(data), 4):
            batch = data[start:start + 4]
            for labels, (_, colour) in zip(named.label([image for image, _ in batch]), batch):
                for key, value in tally(labels, colour, named.categories).items():
                    counts[key] += value
    finally:
        named.close()
    print(counts)
    assert counts["right"] >= 0.9 * (counts["right"] + counts["wrong"]), counts
    assert counts["named_outside"] <= 0.1 * (counts["abstained"] + counts["named_outside"]), counts
