"""The SLiMe segmenter: learned class embeddings applied to batches of images (patch grid,
cross-attention class maps, WAS, per-class rescale, argmax)."""

from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from labeler.attention.hooks import AttentionHooks
from labeler.attention.layers import resolve_layers
from labeler.methods.base import ImageLabels, MethodProvenance
from labeler.methods.device_labels import RawLabels, device_step, finish_labels
from labeler.methods.label_maps import resize_labels
from labeler.methods.slime.algorithm import (
    accumulate_patches,
    class_probabilities,
    gate_classes,
    inference_class_values,
    patch_grid,
    patch_timesteps,
    postprocess_patch,
)
from labeler.methods.slime.capture import SlimeAttentionStore, slime_processors
from labeler.methods.slime.settings import REFERENCE_CANVAS, SlimeOptions


class Slime:
    """SLiMe on a loaded backbone: K learned classes per image, at original resolution.

    Args:
        backbone: the loaded SD components; must match the set's model fingerprint.
        embedding_set: a :class:`labeler.methods.slime.embedding_set.EmbeddingSet`.
        options: inference settings; None = the set's recorded inference settings.
        seed: the job seed. Noise and VAE samples are drawn per patch from a generator seeded by
            (seed, image content, patch index), so an image's labels do not depend on the batch.

    The SLiMe processors are installed on the UNet once, here; each UNet pass resets their
    store. :meth:`close` puts the UNet's own processors back.
    """

    def __init__(self, backbone, embedding_set, options: SlimeOptions | None = None, seed: int = 0) -> None:
        from labeler.timing import StageTimer

        embedding_set.check_compatible(backbone)
        self.backbone = backbone
        self.embedding_set = embedding_set
        self.options = (options or embedding_set.inference_options()).effective()
        self.channel_order = self.options.channel_order or embedding_set.channel_order
        self.seed = seed
        self.num_classes = embedding_set.num_classes
        self.cross_keys = resolve_layers(backbone.unet, embedding_set.layers["cross"])
        self.self_keys = resolve_layers(backbone.unet, embedding_set.layers["self"])
        self.input_size = self.options.input_size or backbone.image_size
        self.decode_side = self.options.decode_side(self.input_size)
        patch = REFERENCE_CANVAS if self.options.paper_mode else (self.options.patch_size or 400)
        self.patch_size = round(patch * self.input_size / REFERENCE_CANVAS)
        self.boxes = patch_grid(self.input_size, self.patch_size, self.options.patches_per_side,
                                self.options.cover_edges)
        self.context = embedding_set.conditioning(backbone)  # (1, 77, D) in the model dtype
        self.categories = embedding_set.categories()
        self._kept: list[Tensor] = []  # the class gate of the current UNet pass
        self.store = SlimeAttentionStore(self.cross_keys, self.self_keys, self.num_classes,
                                         self._class_values, self.options.was_impl)
        self.hooks = AttentionHooks(backbone.unet, slime_processors(self.store))
        self.timer = StageTimer()
        self.device = backbone.device

    def close(self) -> None:
        """Give the UNet its original attention processors back."""
        self.hooks.restore()

    def provenance(self) -> MethodProvenance:
        return MethodProvenance(
            method="slime",
            model=self.backbone.name,
            model_fingerprint=self.backbone.fingerprint,
            resource_digest=self.embedding_set.digest(),
            settings={
                **self.options.to_dict(),
                "channel_order": self.channel_order,
                "patch_pixels": self.patch_size,
                "input_size": self.input_size,
                "seed": self.seed,
                "classes": list(self.embedding_set.classes),
                "layers": {"cross": self.cross_keys, "self": self.self_keys},
            },
        )

    # ---- one UNet pass over a batch of patches -------------------------------------------------

    def _class_values(self, logits: Tensor, probabilities: Tensor) -> Tensor:
        """The store's WAS values (gate + background threshold at inference); keeps the gate.

        Args:
            logits, probabilities: (P, K, h, w) layer-mean class maps.

        Returns:
            (P, K, h, w) WAS values.
        """
        options = self.options
        maps = class_probabilities(logits) if options.normalization == "classes" else probabilities
        keep = gate_classes(maps, options.patch_threshold)
        self._kept.append(keep)
        return inference_class_values(maps, keep, options.background_threshold,
                                      options.threshold_first_kept)

    @torch.no_grad()
    def patch_maps(self, pixels: Tensor, generators: list[torch.Generator]) -> tuple[Tensor, Tensor, Tensor]:
        """Class maps, WAS and gate of a batch of patches (one UNet pass, conditional only).

        Args:
            pixels: (P, 3, S, S) in [-1, 1] at the model input size, channel order already applied.
            generators: one CPU generator per patch (VAE sample, noise, then the timestep
                when ``timestep`` is a range).

        Returns:
            class maps (P, K, h, w) (the normalisation in use), WAS (P, K, h, w) and keep (P, K)
            bool, float32, at the WAS grid (64 x 64 for SD at 512).
        """
        backbone = self.backbone
        with self.timer.stage("vae_encode"):
            latents = backbone.encode_images(pixels, generators, sample=not self.options.posterior_mean)
        noise = torch.stack([torch.randn(latents.shape[1:], generator=g) for g in generators])
        timesteps = patch_timesteps(self.options.timestep_range(), generators).to(latents.device)
        noisy = backbone.scheduler.add_noise(latents.float(), noise.to(latents.device), timesteps)
        context = self.context.expand(len(pixels), -1, -1)
        self.store.reset()
        self._kept.clear()
        self.hooks.ensure()
        with self.timer.stage("unet"):
            backbone.unet(noisy.to(backbone.dtype), timesteps, encoder_hidden_states=context)
        was = self.store.was()
        logits, probabilities = self.store.cross_maps(was.shape[-2:])
        class_maps = class_probabilities(logits) if self.options.normalization == "classes" else probabilities
        return class_maps, was, self._kept[0]

    # ---- images ---------------------------------------------------------------------------------

    def _patches(self, image: np.ndarray) -> Tensor:
        """(n_patches, 3, S, S) model input of one image's patches, in [-1, 1]."""
        from labeler.methods.preprocess import images_to_model_input

        whole = images_to_model_input([image], self.input_size, self.options.antialias,
                                      self.options.resize, self.device)
        if self.channel_order == "bgr":
            whole = whole.flip(1)
        patches = []
        for top, bottom, left, right in self.boxes:
            patch = whole[:, :, top:bottom, left:right]
            if patch.shape[-1] != self.input_size:
                patch = F.interpolate(patch, size=(self.input_size, self.input_size), mode="bilinear",
                                      align_corners=False)
            patches.append(patch)
        return torch.cat(patches)

    def _generators(self, image: np.ndarray) -> list[torch.Generator]:
        digest = hashlib.sha256(np.ascontiguousarray(image).tobytes())
        digest.update(repr((image.shape, self.seed)).encode())
        base = int.from_bytes(digest.digest()[:8], "little") >> 1
        return [torch.Generator().manual_seed(base + index) for index in range(len(self.boxes))]

    def class_scores(self, images: list[np.ndarray]) -> list[Tensor]:
        """Per image, the averaged class maps on the model-size canvas before argmax.

        Returns:
            per image (K, S, S) float32 (S = model input size).
        """
        patches = torch.cat([self._patches(image) for image in images])
        generators = [g for image in images for g in self._generators(image)]
        maps, was, keep = [], [], []
        for start in range(0, len(patches), self.options.patch_batch):
            stop = start + self.options.patch_batch
            batch_maps, batch_was, batch_keep = self.patch_maps(patches[start:stop], generators[start:stop])
            maps.append(batch_maps.cpu())
            was.append(batch_was.cpu())
            keep.append(batch_keep.cpu())
        maps, was, keep = torch.cat(maps), torch.cat(was), torch.cat(keep)
        per_image = len(self.boxes)
        footprint = self.boxes[0][1] - self.boxes[0][0]
        results = []
        with self.timer.stage("postprocess"):
            for index in range(len(images)):
                rows = slice(index * per_image, (index + 1) * per_image)
                processed = torch.stack([
                    postprocess_patch(m, w, k, self.options.rescale, footprint)
                    for m, w, k in zip(maps[rows], was[rows], keep[rows])
                ])
                canvas, _ = accumulate_patches(processed, keep[rows], self.boxes, self.input_size)
                results.append(canvas)
        return results

    @torch.no_grad()
    def predict_grid(self, images: list[np.ndarray]) -> list[tuple[Tensor, Tensor]]:
        """Class index maps at the label grid (original size capped at ``max_label_side``).

        Returns:
            per image: labels (h, w) int32 in [0, K-1] and confidence (h, w) float32 in [0, 1].
        """
        from labeler.methods.preprocess import label_grid_size

        results = []
        for image, canvas in zip(images, self.class_scores(images)):
            height, width = image.shape[:2]
            grid = label_grid_size(height, width, self.options.max_label_side)
            scores = canvas[None]
            if canvas.shape[-2:] != grid:
                scores = F.interpolate(scores, size=grid, mode="bilinear", align_corners=False)
            confidence, labels = scores[0].max(dim=0)
            results.append((labels.to(torch.int32), confidence.clamp(0, 1)))
        return results

    def predict(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Class index maps at original resolution (0 = background) and their confidence.

        Returns:
            per image: labels (H, W) int64 in [0, K-1] and confidence (H, W) float32.
        """
        return [
            (
                resize_labels(labels.numpy().astype(np.int64), *image.shape[:2]),
                resize_labels(confidence.numpy(), *image.shape[:2]),
            )
            for image, (labels, confidence) in zip(images, self.predict_grid(images))
        ]

    def label(self, images: list[np.ndarray]) -> list[ImageLabels]:
        """Label a batch of (H_i, W_i, 3) uint8 RGB images; background gets no annotation."""
        return [self.finish(raw) for raw in self.label_raw(images)]

    def finish(self, raw: RawLabels) -> ImageLabels:
        """The host step of one image's :meth:`label_raw` output (thread-safe)."""
        return finish_labels(raw)

    def label_raw(self, images: list[np.ndarray]) -> list[RawLabels]:
        """The device step of :meth:`label` (see
        :func:`labeler.methods.device_labels.device_step`)."""
        category_of = np.arange(self.num_classes, dtype=np.int64)
        results = []
        for image, (labels, confidence) in zip(images, self.predict_grid(images)):
            label_map = torch.where(labels == 0, -1, labels)
            results.append(device_step(
                label_map, confidence, *image.shape[:2], category_of=category_of
            ))
        return results
