"""DiffSeg naming on the tiny model: colour words name the segments of their colour, abstain on
colours outside the vocabulary (white, grey, black), and never change the segments."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from _output_fixture import FixtureImage, write_label_maps, write_output

from labeler.eval.evaluate import EvalOptions, evaluate
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


def _write_named_run(root, together, categories, truths) -> tuple[str, str, list[str]]:
    """The named label maps as an output folder and the true colours as label maps: outside
    colours are ``background`` (class 0), vocabulary colour i is class i + 1."""
    images, maps = [], {}
    for index, (labels, truth) in enumerate(zip(together, truths)):
        masks = [(int(category), labels.label_map == label, float(score))
                 for label, (category, score) in enumerate(zip(labels.category_ids, labels.scores))]
        images.append(FixtureImage(f"world{index}", np.zeros((*truth.shape, 3), np.uint8), masks))
        maps[f"world{index}"] = np.where(truth < len(VOCABULARY), truth + 1, 0).astype(np.uint8)
    write_output(root, images, categories)
    write_label_maps(root + "/gt", maps)
    return root + "/out", root + "/gt", ["background", *VOCABULARY]


def test_named_run_scores_by_name_in_labeler_eval(runs, tmp_path):
    """``labeler eval`` scores the names semantically: the right names give high IoU for every
    colour present; the same output against ground truth whose colour names are rotated (each
    class called by another colour's name) scores near zero, so names (not ids) are matched."""
    categories, together, _, _ = runs
    truths = [colour for _, colour in worlds(2, seed=0)]
    out, gt, classes = _write_named_run(str(tmp_path), together, categories, truths)
    report = evaluate(out, gt, EvalOptions(classes=",".join(classes)))
    assert list(report["protocols"]) == ["miou", "slime"]
    assert report["class_mapping"]["unnamed"] == ["segment"] and not report["warnings"]
    per_class = report["protocols"]["miou"]["per_class"]
    present = [c for c in classes if per_class[c]["gt_pixels"] > 0]
    assert len(present) >= 4, per_class  # background and at least three colours
    # every named colour's pixels are named right; the IoU lost is DiffSeg's boundary (0.73 for
    # the smallest shape, ~1300 pixels)
    assert all(per_class[c]["iou"] >= 0.7 for c in present), per_class
    assert report["protocols"]["miou"]["mIoU"] >= 0.8
    rotated = ["background", *VOCABULARY[1:], VOCABULARY[0]]
    swapped = evaluate(out, gt, EvalOptions(classes=",".join(rotated)))
    per_class = swapped["protocols"]["miou"]["per_class"]
    assert all(per_class[c]["iou"] < 0.2 for c in rotated[1:] if per_class[c]["gt_pixels"]), per_class


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
