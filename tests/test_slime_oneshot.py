"""End to end: fit SLiMe on ONE synthetic image, apply it to held-out images of the same kind.

Runs the default recipe unchanged on the `tiny` model as it ships (no private calibration, no
cut sizes): ``FitSettings()`` (200 epochs at 512 px, posterior samples, t ~ U{5..100},
augmentations, weighted CE + WAS MSE + the SD loss, lr 0.1) and the inference settings the set
records (the reference's: 2x2 patches, 77-token class maps, class gate, background threshold).
The world: red and blue objects of varied shapes, sizes and counts on a textured green ground
(:func:`labeler.testing.worlds.slime_world`), world seed 0 with three held-out images:
the same computation as ``bench/tiny_quality.py --slime-seeds 0 --held-out 3``.

Floors, both measured: the fit of this exact computation scores 0.978, 0.976 and 0.985 per
image (mean 0.980; `bench/tiny_quality.py --slime-seeds 0 --held-out 3`, docs/tiny-model.md), so
FLOOR 0.85 leaves margin and stays above issue 14's acceptance figure (>= 0.5); the prompt
embeddings without a fit score 0.23, 0.56 and 0.23 (mean 0.34), below UNFIT_CEILING.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from labeler.methods.annotations import AnnotatedImage
from labeler.methods.slime.algorithm import mean_iou_present
from labeler.methods.slime.embedding_set import prompt_embeddings
from labeler.methods.slime.fit import FitSettings, fit_embedding_set
from labeler.methods.slime.segmenter import Slime
from labeler.testing.worlds import SLIME_CLASSES, slime_world

# minutes on 2 CPU cores (200 fit steps at 512 px): kept out of the default run, run by .ci/run-slow.
pytestmark = pytest.mark.slow

FLOOR = 0.85
UNFIT_CEILING = 0.4


def test_one_shot_fit_labels_held_out_images(tiny_backbone):
    rng = np.random.default_rng(0)
    image, mask = slime_world(rng)
    held_out = [slime_world(rng) for _ in range(3)]
    fitted = fit_embedding_set(tiny_backbone, [AnnotatedImage("one", image, mask, "0" * 16)],
                               SLIME_CLASSES, FitSettings(), progress=False)
    unfit = copy.deepcopy(fitted)
    unfit.embeddings = prompt_embeddings(tiny_backbone, fitted.prompt)[1:3].clone()
    unfit.sha256 = None

    scores = {}
    for name, embedding_set in (("fitted", fitted), ("unfit", unfit)):
        segmenter = Slime(tiny_backbone, embedding_set, seed=0)
        predictions = segmenter.predict([held for held, _ in held_out])
        segmenter.close()
        scores[name] = float(np.mean([mean_iou_present(labels, truth, 3)
                                      for (labels, _), (_, truth) in zip(predictions, held_out)]))
    assert scores["fitted"] >= FLOOR, scores
    assert scores["unfit"] <= UNFIT_CEILING, scores
