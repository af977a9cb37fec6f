"""The DiffewS segmenter: a fixed support set applied to batches of query images.

Per worker, once: the support banks (:mod:`labeler.methods.diffews.support`). Per batch: the
queries are squashed to the model size and VAE-encoded (posterior mean); per class, one UNet pass
at t = 1 reads that class's bank (broadcast over the batch), the negated output is decoded into a
soft map and its peak (:mod:`labeler.methods.diffews.algorithm`; for the ``relative`` rule the
reference's uint8 read-back); the soft maps are resized bilinearly to the
label size (the original size, capped at ``max_label_side``), thresholded, and overlaps go to the
class with the highest soft value.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from labeler.methods.annotations import AnnotatedImage
from labeler.methods.base import ImageLabels, MethodProvenance, compact_labels
from labeler.methods.diffews.algorithm import (
    DecisionRule,
    decided_soft_maps,
    decode_mask_images,
    mask_latent_from_output,
    resize_soft_maps,
    resolve_classes,
)
from labeler.methods.diffews.attention import SupportBank, install_kv_fusion
from labeler.methods.diffews.settings import DiffewsOptions
from labeler.methods.diffews.support import (
    TIMESTEP,
    BankSettings,
    build_banks,
    class_supports,
    empty_context,
)
from labeler.methods.label_maps import resize_labels
from labeler.methods.preprocess import images_to_model_input, label_grid_size
from labeler.timing import StageTimer


def bank_cache_dir() -> Path:
    """Where support banks are cached (``$LABELER_CACHE/diffews-banks``)."""
    root = Path(os.environ.get("LABELER_CACHE", Path.home() / ".cache" / "labeler"))
    return root / "diffews-banks"


class DiffewS:
    """DiffewS on a loaded DiffewS backbone, with one support set.

    Args:
        backbone: from :func:`labeler.methods.diffews.model.load_diffews_backbone` (its
            ``conv_in`` takes 8-channel supports).
        weights: the UNet weights digest (cache key and provenance).
        support: the annotated support images (label maps over ``classes``).
        classes: K names, background first.
        options: inference settings.
    """

    def __init__(self, backbone, weights: str, support: list[AnnotatedImage], classes: tuple[str, ...],
                 options: DiffewsOptions | None = None) -> None:
        self.backbone = backbone
        self.device = backbone.device
        self.timer = StageTimer()
        self.weights = weights
        self.classes = tuple(classes)
        self.options = options or DiffewsOptions()
        self.rule = DecisionRule(self.options.rule, self.options.level, self.options.presence,
                                 self.options.ratio)
        self.input_size = self.options.input_size or backbone.image_size
        self.decode_side = self.options.decode_side(self.input_size)
        self.supports = class_supports(support, self.classes)
        self.fusion = install_kv_fusion(backbone.unet)
        self.context = empty_context(backbone, self.options.context_tokens)
        self.bank_settings = BankSettings(self.input_size, self.options.context_tokens,
                                          self.options.antialias, str(backbone.dtype).removeprefix("torch."))
        cache = bank_cache_dir() if self.options.cache_banks else None
        self.banks = build_banks(backbone, self.fusion, self.supports, self.context,
                                 self.bank_settings, weights, cache)
        self.categories = [
            {"id": s.index, "name": s.name, "supercategory": "diffews"} for s in self.supports
        ]
        self.samples = [(sample.name, sample.sha256) for sample in support]
        joined = "/".join(s.digest for s in self.supports)
        self.support_digest = hashlib.sha256(joined.encode()).hexdigest()[:16]

    def provenance(self) -> MethodProvenance:
        return MethodProvenance(
            method="diffews",
            model=self.backbone.name,
            model_fingerprint=self.weights,
            resource_digest=self.support_digest,
            settings={
                **self.options.to_dict(),
                "input_size": self.input_size,
                "classes": list(self.classes),
                "support": [{"name": name, "sha256": digest} for name, digest in self.samples],
                "shots": {s.name: len(s.images) for s in self.supports},
            },
        )

    @torch.no_grad()
    def query_soft_maps(self, latents: Tensor, bank: SupportBank) -> tuple[Tensor, Tensor]:
        """One query pass against one class's bank, decoded into what the rule decides on.

        Args:
            latents: (B, 4, h, w) query latents.

        Returns:
            soft (B, 8h, 8w) float32 in [0, 1] and peak (B,) (see
            :func:`~labeler.methods.diffews.algorithm.decided_soft_maps`).
        """
        backbone = self.backbone
        timesteps = torch.full((len(latents),), TIMESTEP, dtype=torch.long, device=latents.device)
        self.fusion.read(bank)
        try:
            output = backbone.unet(latents, timesteps,
                                   encoder_hidden_states=self.context.expand(len(latents), -1, -1)).sample
        finally:
            self.fusion.off()
        decoded = decode_mask_images(backbone.vae, mask_latent_from_output(output))
        soft, peak = decided_soft_maps(decoded, self.rule)
        return soft.cpu(), peak.cpu()

    @torch.no_grad()
    def soft_maps_and_peaks(self, images: list[np.ndarray]) -> tuple[Tensor, Tensor]:
        """Per-class soft maps on the model-size canvas, with the peaks the rule compares to.

        Returns:
            soft (B, C, S, S) float32 in [0, 1], C = K - 1 classes in category order; peak (B, C).
        """
        pixels = images_to_model_input(images, self.input_size, self.options.antialias,
                                       device=self.backbone.device)
        latents = self.backbone.encode_images(pixels)
        per_class = [self.query_soft_maps(latents, bank) for bank in self.banks]
        return (torch.stack([soft for soft, _ in per_class], dim=1),
                torch.stack([peak for _, peak in per_class], dim=1))

    def soft_maps(self, images: list[np.ndarray]) -> Tensor:
        """Per-class soft maps on the model-size canvas: (B, C, S, S) float32 in [0, 1]."""
        return self.soft_maps_and_peaks(images)[0]

    def label(self, images: list[np.ndarray]) -> list[ImageLabels]:
        """Label a batch of (H_i, W_i, 3) uint8 RGB images; absent classes get no annotation."""
        category_of = np.array([s.index for s in self.supports], dtype=np.int64)
        results = []
        soft_maps, peaks = self.soft_maps_and_peaks(images)
        for image, soft, peak in zip(images, soft_maps, peaks):
            height, width = image.shape[:2]
            grid = label_grid_size(height, width, self.options.max_label_side)
            labels, confidence = resolve_classes(resize_soft_maps(soft, grid), self.rule, peak)
            label_map = resize_labels(labels.numpy().astype(np.int32), height, width)
            confidence = resize_labels(confidence.numpy(), height, width)
            results.append(compact_labels(label_map, confidence, category_of=category_of))
        return results
