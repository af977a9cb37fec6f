"""``--format cvat-images``: CVAT for images 1.1 XML with native masks, judged by Datumaro."""

from __future__ import annotations

import numpy as np
import pytest

from labeler.output.exporters.cvat_images import cvat_mask_rle
from tests._output_fixture import write_review_output
from tests.consumers import assert_same_masks, export, reference_masks

dm = pytest.importorskip("datumaro")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("cvat")
    write_review_output(str(root))
    return root / "out"


def test_cvat_rle_runs_start_with_background_inside_the_box():
    mask = np.zeros((6, 7), np.uint8)
    mask[1, 2:5] = 1
    mask[3, 4] = 1
    assert cvat_mask_rle(mask) == ((2, 1, 3, 3), [0, 3, 5, 1])
    mask[1, 2] = 0
    assert cvat_mask_rle(mask) == ((3, 1, 2, 3), [0, 2, 3, 1])
    mask[1, :] = 0
    assert cvat_mask_rle(mask) == ((4, 3, 1, 1), [0, 1])


def test_datumaro_reads_the_masks_and_scores(finished, tmp_path):
    code, text = export(finished, "cvat-images", tmp_path, "--images", "copy")
    assert code == 0, text
    dataset = dm.Dataset.import_from(str(tmp_path), "cvat")
    labels = [c.name for c in dataset.categories()[dm.AnnotationType.label]]
    assert labels == ["cat", "dog"]
    reference = reference_masks(finished)
    found = {}
    for item in dataset:
        masks = [a for a in item.annotations if isinstance(a, dm.Mask)]
        assert item.media.size == next(iter(reference[f"{item.id}.png"]), np.zeros(
            item.media.size)).shape
        found[f"{item.id}.png"] = masks
    assert sorted(found) == ["a.png", "b.png", "c.png"]  # c.png: labeled, no masks
    for name, masks in reference.items():
        assert_same_masks([m.image for m in found[name]], masks)
    scores = {(name, labels[m.label]): m.attributes["score"] for name, masks in found.items()
              for m in masks}
    assert scores == {("a.png", "cat"): 0.91, ("a.png", "dog"): 0.42, ("b.png", "dog"): 0.7}
