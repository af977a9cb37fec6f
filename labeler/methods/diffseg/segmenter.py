"""The DiffSeg segmenter: one UNet pass per batch with self-attention captured, then the pure
algorithm of :mod:`labeler.methods.diffseg.algorithm`."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from labeler.attention.capture import ResolutionMeanSink, capturing_processors
from labeler.attention.hooks import AttentionHooks
from labeler.attention.layers import select_layers, unet_attention_layers
from labeler.errors import UserError
from labeler.methods.base import ImageLabels, MethodProvenance
from labeler.methods.device_labels import RawLabels, device_step, finish_labels
from labeler.methods.diffseg.algorithm import (
    DiffSegOptions,
    _side_of,
    aggregate_attention,
    labels_from_proposals,
    merge_proposals,
)
from labeler.methods.diffseg.method import CATEGORIES
from labeler.methods.preprocess import images_to_model_input, label_grid_size
from labeler.models.backbone import Backbone
from labeler.timing import StageTimer


class DiffSeg:
    """DiffSeg on a loaded backbone: zero-shot, class-agnostic segments.

    Per batch: whole images resized to the model's size, VAE posterior mean, one UNet pass at
    t=300 without added noise, conditioned on the empty prompt, with every self-attention layer
    captured (head mean in the processor, layer mean per resolution), then aggregation, KL merging
    and labeling. Labels are computed at the original size (capped at ``max_label_side`` on the
    long side, then nearest-resized), so nothing is centre-cropped away.

    The capturing processors are installed on the UNet once, here; each batch resets the sink.
    :meth:`close` puts the UNet's own processors back.

    Args:
        backbone: the loaded SD components.
        options: the ``[diffseg]`` settings (reference defaults when None): merging, timestep,
            label resolution, antialiasing.
    """

    categories: ClassVar[list[dict]] = CATEGORIES

    def __init__(self, backbone: Backbone, options: DiffSegOptions | None = None) -> None:
        self.backbone = backbone
        self.options = options or DiffSegOptions()
        self.timestep = self.options.timestep
        self.max_label_side = self.options.max_label_side
        self.antialias = self.options.antialias
        self.device = backbone.device
        self.layers = select_layers(unet_attention_layers(backbone.unet), "self")
        if not self.layers:
            raise UserError(f"model {backbone.name} has no self-attention layers")
        self.sink = ResolutionMeanSink()
        self.hooks = AttentionHooks(
            backbone.unet, capturing_processors({layer.key: self.sink for layer in self.layers})
        )
        self.timer = StageTimer()

    def close(self) -> None:
        """Give the UNet its original attention processors back."""
        self.hooks.restore()

    def provenance(self) -> MethodProvenance:
        return MethodProvenance(
            method="diffseg",
            model=self.backbone.name,
            model_fingerprint=self.backbone.fingerprint,
            settings={
                "timestep": self.timestep,
                "kl_threshold": self.options.kl_threshold,
                "iterations": self.options.iterations,
                "grid_points": self.options.grid_points,
                "weights": self.options.weight_map,
                "max_label_side": self.max_label_side,
                "antialias": self.antialias,
            },
        )

    def attention_maps(self, images: list[np.ndarray]) -> dict[int, torch.Tensor]:
        """Capture the per-resolution self-attention of one UNet pass.

        Returns:
            ``{side: (B, side*side, side*side)}`` float32, head and layer means.
        """
        backbone = self.backbone
        with self.timer.stage("vae_encode"):
            pixels = images_to_model_input(images, backbone.image_size, self.antialias)
            latents = backbone.encode_images(pixels)
        context = backbone.encode_prompts([""]).expand(len(images), -1, -1)
        timesteps = torch.full(
            (len(images),), self.timestep, device=backbone.device, dtype=torch.long
        )
        self.sink.reset()
        self.hooks.ensure()
        with self.timer.stage("unet_capture"), torch.no_grad():
            backbone.unet(latents, timesteps, encoder_hidden_states=context)
        return self.sink.means()

    def label(self, images: list[np.ndarray]) -> list[ImageLabels]:
        """Label a batch of (H_i, W_i, 3) uint8 RGB images; one segment per label."""
        return [self.finish(raw) for raw in self.label_raw(images)]

    def finish(self, raw: RawLabels) -> ImageLabels:
        """The host step of one image's :meth:`label_raw` output (thread-safe)."""
        return finish_labels(raw)

    @torch.no_grad()
    def label_raw(self, images: list[np.ndarray]) -> list[RawLabels]:
        """The device step of :meth:`label`: up to the label grid's argmax, relabelled on an
        accelerator (see :func:`labeler.methods.device_labels.device_step`)."""
        attention = self.attention_maps(images)
        with self.timer.stage("aggregate"):
            aggregated = aggregate_attention(attention, self.options.weight_map)
        with self.timer.stage("merge"):
            proposals = merge_proposals(
                aggregated, self.options.schedule, self.options.grid_points, eps=self.options.eps
            )
        side = _side_of(aggregated.shape[-1])
        results = []
        with self.timer.stage("labeling"):
            for image, image_proposals in zip(images, proposals):
                height, width = image.shape[:2]
                grid = label_grid_size(height, width, self.max_label_side)
                labels, confidence = labels_from_proposals(image_proposals, side, grid)
                results.append(device_step(labels, confidence, height, width))
        return results
