"""End to end: fit SLiMe on ONE synthetic image, apply it to held-out images of the same kind.

The `tiny` model is random, and three of its properties defeat SLiMe where a trained SD does not
(measured; see the README's SLiMe section):

* its VAE posterior has std ~1 against a mean that varies by ~0.2, so a posterior *sample* is
  mostly noise, and its latents are ~20x smaller than SD's unit-variance latents, so the
  diffusion noise at t in [5, 100] swamps them;
* its cross-attention scores are ~0.06 in magnitude (SD: several units), so a class token can
  only win a pixel with embeddings ~40x longer than the text encoder's, which wrecks the rest of
  the network through the value path;
* its BOS token is no attention sink, so the reference's 77-token normalisation never gives the
  background the 0.2 it needs to pass the class gate.

The test therefore calibrates a private copy of `tiny` the way a trained SD behaves (a
near-deterministic VAE posterior, latents scaled to unit variance, sharper cross- and 64x64
self-attention) and applies the set with the ``classes`` normalisation (the training one). The
fit itself runs the reference loop unchanged (posterior samples, t ~ U{5..100}, augmentations,
weighted CE + WAS MSE) at 256 px, with the SD loss off (on random weights its guidance-100
target is noise that swamps the gradient) and lr 0.3 to converge in 200 steps.

Measured on this calibrated model (CPU): held-out mean per-image mIoU 0.533 with the seeds used
here, 0.35-0.73 over four other (data, fit) seed pairs; the unfit initial embeddings score 0.10
and an all-background answer ~0.17. The floor sits below the worst seed.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from labeler.methods.slime.algorithm import mean_iou_present
from labeler.methods.slime.data import AnnotatedImage
from labeler.methods.slime.embedding_set import prompt_embeddings
from labeler.methods.slime.fit import FitSettings, fit_embedding_set
from labeler.methods.slime.segmenter import Slime
from labeler.methods.slime.settings import SlimeOptions

# ~9 minutes on 2 CPU cores (200 fit steps): kept out of the default run, run by .ci/run-slow.
pytestmark = pytest.mark.slow

CLASSES = ("background", "red", "blue")
FLOOR = 0.3  # measured 0.533 (other seeds: 0.35-0.73)
UNFIT_CEILING = 0.2  # measured 0.099


def split_image(rng: np.random.Generator, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Green background on the left, a red block top-right, a blue block bottom-right."""
    mask = np.zeros((size, size), np.int64)
    x0, y0 = (rng.uniform(0.3, 0.7, 2) * size).astype(int)
    mask[:y0, x0:] = 1
    mask[y0:, x0:] = 2
    palette = np.array([[90, 160, 90], [220, 40, 40], [40, 60, 210]], np.uint8)
    return palette[mask], mask


@pytest.fixture(scope="module")
def calibrated_tiny(labeler_cache):
    """A private `tiny` with SD-like VAE statistics and attention sharpness (see module doc)."""
    from labeler.models.backbone import load_backbone

    backbone = load_backbone("tiny", device="cpu")
    with torch.no_grad():
        for name, module in backbone.unet.named_modules():
            if name.endswith("attn2"):
                module.to_q.weight.mul_(10.0)
            if name.endswith("attn1") and name.startswith("up_blocks.3"):
                module.to_q.weight.mul_(2.0)
                module.to_k.weight.mul_(2.0)
        moments = backbone.vae.quant_conv
        half = moments.weight.shape[0] // 2
        moments.weight[half:] = 0.0
        moments.bias[half:] = -30.0  # log-variance: posterior std ~3e-7
        backbone.vae.register_to_config(scaling_factor=3.5)
    return backbone


def test_one_shot_fit_labels_held_out_images(calibrated_tiny):
    rng = np.random.default_rng(0)
    image, mask = split_image(rng)
    held_out = [split_image(rng) for _ in range(4)]
    settings = FitSettings(epochs=200, fit_size=256, mask_size=32, lr=0.3, sd_weight=0.0, seed=0)
    fitted = fit_embedding_set(calibrated_tiny, [AnnotatedImage("one", image, mask, "0" * 16)],
                               CLASSES, settings, progress=False)
    unfit = copy.deepcopy(fitted)
    unfit.embeddings = prompt_embeddings(calibrated_tiny, fitted.prompt)[1:3].clone()
    unfit.sha256 = None

    options = SlimeOptions(normalization="classes", input_size=256)
    scores = {}
    for name, embedding_set in (("fitted", fitted), ("unfit", unfit)):
        segmenter = Slime(calibrated_tiny, embedding_set, options, seed=0)
        predictions = segmenter.predict([held for held, _ in held_out])
        segmenter.close()
        scores[name] = float(np.mean([mean_iou_present(labels, truth, 3)
                                      for (labels, _), (_, truth) in zip(predictions, held_out)]))
    assert scores["fitted"] >= FLOOR, scores
    assert scores["unfit"] <= UNFIT_CEILING, scores
