"""The DiffewS segmenter: a fixed support set applied to batches of query images.

Per worker, once: the support banks (:mod:`labeler.methods.diffews.support`). Per batch: the
queries are squashed to the model size and VAE-encoded (posterior mean); per class, one UNet pass
at t = 1 reads that class's bank (broadcast over the batch), the negated output is decoded into a
soft map (:mod:`labeler.methods.diffews.algorithm`); the soft maps are resized bilinearly to the
label size (the original size, capped at ``max_label_side``), thresholded, and overlaps go to the
class with the highest soft value.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from labeler.methods.base import ImageLabels, compact_labels
from labeler.methods.diffews.algorithm import (
    DEFAULT_LEVEL,
    DEFAULT_PRESENCE,
    REFERENCE_RATIO,
    DecisionRule,
    decode_soft_maps,
    mask_latent_from_output,
    resize_soft_maps,
    resolve_classes,
)
from labeler.methods.diffews.attention import SupportBank, install_kv_fusion
from labeler.methods.diffews.support import (
    TIMESTEP,
    BankSettings,
    build_banks,
    class_supports,
    empty_context,
)
from labeler.methods.preprocess import images_to_model_input, label_grid_size, resize_labels
from labeler.methods.slime.data import AnnotatedImage


@dataclass(frozen=True)
class DiffewsOptions:
    """DiffewS inference settings (the ``[diffews]`` job table).

    Attributes:
        rule: ``absolute`` (absence-aware, default) or ``relative`` (the reference's).
        level: absolute rule: pixel threshold on the soft map.
        presence: absolute rule: minimum max of the soft map for the class to be present.
        ratio: relative rule: pixel threshold as a fraction of the per-image max.
        context_tokens: 2 (``[BOS, EOS]``, the reference's inference) or 77 (its training).
        input_size: model input side; None = the model's (512 for SD).
        antialias: antialiased squash-resize of images (False = plain bilinear, the reference).
        max_label_side: labels are decided at the original size capped at this side.
        cache_banks: keep support banks in ``$LABELER_CACHE/diffews-banks`` across runs.
    """

    rule: str = "absolute"
    level: float = DEFAULT_LEVEL
    presence: float = DEFAULT_PRESENCE
    ratio: float = REFERENCE_RATIO
    context_tokens: int = 2
    input_size: int | None = None
    antialias: bool = True
    max_label_side: int = 1024
    cache_banks: bool = True

    def __post_init__(self) -> None:
        self.decision_rule()  # validates rule, level, presence, ratio
        if self.context_tokens not in (2, 77):
            raise ValueError(f"context_tokens must be 2 or 77, got {self.context_tokens}")
        if self.input_size is not None and (self.input_size < 64 or self.input_size % 64):
            raise ValueError(f"input_size must be a multiple of 64, got {self.input_size}")
        if self.max_label_side < 1:
            raise ValueError("max_label_side must be >= 1")

    def decision_rule(self) -> DecisionRule:
        return DecisionRule(self.rule, self.level, self.presence, self.ratio)

    @classmethod
    def from_mapping(cls, values: dict) -> DiffewsOptions:
        """From a job table; unknown keys are refused by name."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown [diffews] settings: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**values)

    def to_dict(self) -> dict:
        return asdict(self)


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
        self.weights = weights
        self.classes = tuple(classes)
        self.options = options or DiffewsOptions()
        self.rule = self.options.decision_rule()
        self.input_size = self.options.input_size or backbone.image_size
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

    def provenance(self) -> dict:
        return {
            "method": "diffews",
            "model": self.backbone.name,
            "model_fingerprint": self.weights,
            "embedding_set": self.support_digest,
            "settings": {
                **self.options.to_dict(),
                "input_size": self.input_size,
                "classes": list(self.classes),
                "support": [{"name": name, "sha256": digest} for name, digest in self.samples],
                "shots": {s.name: len(s.images) for s in self.supports},
            },
        }

    @torch.no_grad()
    def query_soft_maps(self, latents: Tensor, bank: SupportBank) -> Tensor:
        """One query pass against one class's bank, decoded.

        Args:
            latents: (B, 4, h, w) query latents.

        Returns:
            (B, 8h, 8w) float32 soft maps in [0, 1].
        """
        backbone = self.backbone
        timesteps = torch.full((len(latents),), TIMESTEP, dtype=torch.long, device=latents.device)
        self.fusion.read(bank)
        try:
            output = backbone.unet(latents, timesteps,
                                   encoder_hidden_states=self.context.expand(len(latents), -1, -1)).sample
        finally:
            self.fusion.off()
        return decode_soft_maps(backbone.vae, mask_latent_from_output(output))

    @torch.no_grad()
    def soft_maps(self, images: list[np.ndarray]) -> Tensor:
        """Per-class soft maps on the model-size canvas.

        Returns:
            (B, C, S, S) float32 in [0, 1], C = K - 1 classes in category order.
        """
        pixels = images_to_model_input(images, self.input_size, self.options.antialias)
        latents = self.backbone.encode_images(pixels)
        return torch.stack([self.query_soft_maps(latents, bank).cpu() for bank in self.banks], dim=1)

    def label(self, images: list[np.ndarray]) -> list[ImageLabels]:
        """Label a batch of (H_i, W_i, 3) uint8 RGB images; absent classes get no annotation."""
        category_of = np.array([s.index for s in self.supports], dtype=np.int64)
        results = []
        for image, soft in zip(images, self.soft_maps(images)):
            height, width = image.shape[:2]
            grid = label_grid_size(height, width, self.options.max_label_side)
            labels, confidence = resolve_classes(resize_soft_maps(soft, grid), self.rule)
            label_map = resize_labels(labels.numpy().astype(np.int32), height, width)
            confidence = resize_labels(confidence.numpy(), height, width)
            results.append(compact_labels(label_map, confidence, category_of=category_of))
        return results
