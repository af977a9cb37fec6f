"""DiffewS supports: annotated images turned into K/V banks, once per support set.

A support set is 1-N images with label maps over K classes (0 = background; the SLiMe annotation
format, see :mod:`labeler.methods.slime.data`). For each class c >= 1, every image that contains
it is one shot: the image squashed to the model size (bilinear, antialiased) and its binary mask
``label == c`` (nearest) as a 3-channel +-1 image, both VAE-encoded (posterior means) and
concatenated along channels, image first. One UNet pass per class at t = 1 with the empty context
records the class's bank (see :mod:`labeler.methods.diffews.attention`).

Banks depend on the support, the model weights and the settings only, so they are cached as
safetensors files named by the hash of all three.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from labeler.io.listing import path_kind
from labeler.methods.annotations import AnnotatedImage, check_every_class_annotated
from labeler.methods.diffews.attention import KVFusion, SupportBank
from labeler.methods.preprocess import images_to_model_input
from labeler.models.safetensors_header import MalformedSafetensors

logger = logging.getLogger(__name__)

#: Timestep of both DiffewS passes (the reference's ``set_timesteps(1)`` with ``steps_offset=1``).
TIMESTEP = 1
#: Cache format of support banks (2: the 77-token context pads with "!").
BANK_FORMAT = 2
#: The pad token of the reference's 77-token training ids (id 0 in CLIP's vocabulary).
TRAINING_PAD = "!"


@dataclass(frozen=True)
class ClassSupport:
    """The shots of one class.

    Attributes:
        index: the class value in the label maps (1..K-1).
        name: the class name.
        images: (n, H_i, W_i, 3) uint8 RGB per shot (a list).
        masks: (H_i, W_i) bool per shot.
        digest: 16 hex digits over the shots' pixels and masks.
    """

    index: int
    name: str
    images: list[np.ndarray]
    masks: list[np.ndarray]
    digest: str


def class_supports(samples: list[AnnotatedImage], classes: tuple[str, ...]) -> list[ClassSupport]:
    """Split annotated images into the shots of each non-background class.

    Raises:
        UserError: a class has no pixel in any support mask.
    """
    check_every_class_annotated(samples, classes)
    supports = []
    for index, name in enumerate(classes):
        if index == 0:
            continue
        images, masks, digest = [], [], hashlib.sha256()
        for sample in samples:
            mask = sample.mask == index
            if mask.any():
                images.append(sample.image)
                masks.append(mask)
                for array in (sample.image, mask):
                    digest.update(repr(array.shape).encode())
                    digest.update(np.ascontiguousarray(array).tobytes())
        supports.append(ClassSupport(index, name, images, masks, digest.hexdigest()[:16]))
    return supports


def mask_images(masks: list[np.ndarray], size: int) -> Tensor:
    """Binary masks as VAE input: nearest-resized to ``size``, 3 channels, white +1 / black -1.

    Returns:
        (n, 3, size, size) float32.
    """
    resized = [
        F.interpolate(torch.from_numpy(np.ascontiguousarray(mask)).float()[None, None],
                      size=(size, size), mode="nearest")
        for mask in masks
    ]
    batch = torch.cat(resized)[:, 0]
    return (batch * 2 - 1)[:, None].expand(-1, 3, -1, -1).contiguous()


def empty_context(backbone, tokens: int = 2) -> Tensor:
    """The empty prompt's text-encoder states: ``[BOS, EOS]`` (2 tokens, the reference's
    inference) or the reference's 77 training ids, ``[BOS, EOS]`` then :data:`TRAINING_PAD`.

    The reference trains on saved ids (``[49406, 49407]`` and 75 zeros: ``"!"``, the SD-2.1
    tokenizer's pad token), so the 77-token context pads with ``"!"`` on every model, also on one
    whose tokenizer pads with EOS (SD 1.x, ``tiny``).

    Returns:
        (1, tokens, D) in the backbone's dtype on its device.
    """
    ids = backbone.tokenizer([""], return_tensors="pt").input_ids
    if tokens > ids.shape[1]:
        pad = backbone.tokenizer.convert_tokens_to_ids(TRAINING_PAD)
        ids = torch.cat([ids, torch.full((1, tokens - ids.shape[1]), pad, dtype=ids.dtype)], dim=1)
    with torch.no_grad():
        hidden = backbone.text_encoder(ids.to(backbone.text_encoder.device))[0]
    return hidden.to(backbone.device, backbone.dtype)


def support_latents(backbone, images: list[np.ndarray], masks: list[np.ndarray], size: int,
                    antialias: bool = True) -> Tensor:
    """8-channel support latents [image latent || mask latent] (posterior means).

    Returns:
        (n, 8, size/8, size/8) in the backbone's dtype.
    """
    pixels = images_to_model_input(images, size, antialias, device=backbone.device)
    image_latents = backbone.encode_images(pixels)
    mask_latents = backbone.encode_images(mask_images(masks, size))
    return torch.cat([image_latents, mask_latents], dim=1)


@torch.no_grad()
def record_bank(unet, fusion: KVFusion, latents: Tensor, context: Tensor, shots: int) -> SupportBank:
    """One support pass in record mode; the UNet output is discarded.

    Args:
        latents: (G * shots, 8, h, w) support latents, class-major.
        context: (1, T, D) empty-prompt states.

    Returns:
        the bank, (G, heads, shots * N, d) per layer.
    """
    fusion.record(shots)
    timesteps = torch.full((len(latents),), TIMESTEP, dtype=torch.long, device=latents.device)
    try:
        unet(latents, timesteps, encoder_hidden_states=context.expand(len(latents), -1, -1))
        return fusion.bank
    finally:
        fusion.off()


@dataclass(frozen=True)
class BankSettings:
    """What a bank depends on besides the support and the weights."""

    size: int
    context_tokens: int
    antialias: bool
    dtype: str

    def key(self) -> str:
        return f"v{BANK_FORMAT}-{self.size}-{self.context_tokens}-{int(self.antialias)}-{self.dtype}"


def bank_path(cache_dir: Path, weights: str, support: ClassSupport, settings: BankSettings) -> Path:
    """The cache file of one class's bank: named by the hash of weights, support and settings."""
    name = hashlib.sha256(f"{weights}/{support.digest}/{settings.key()}".encode()).hexdigest()[:24]
    return cache_dir / f"{name}.safetensors"


def build_banks(
    backbone,
    fusion: KVFusion,
    supports: list[ClassSupport],
    context: Tensor,
    settings: BankSettings,
    weights: str,
    cache_dir: Path | None = None,
) -> list[SupportBank]:
    """The bank of every class: loaded from ``cache_dir`` when there, else computed (and saved).

    Returns:
        one G = 1 bank per class, in the backbone's dtype on its device.
    """
    banks = []
    for support in supports:
        path = bank_path(cache_dir, weights, support, settings) if cache_dir is not None else None
        bank = _cached_bank(path) if path is not None else None
        if bank is not None:
            bank = bank.to(backbone.device, backbone.dtype)
            logger.info("class %s: support bank read from %s", support.name, path)
        else:
            latents = support_latents(backbone, support.images, support.masks, settings.size,
                                      settings.antialias)
            bank = record_bank(backbone.unet, fusion, latents, context, shots=len(support.images))
            if path is not None:
                bank.save(path, {"class": support.name, "support": support.digest,
                                 "weights": weights, "settings": settings.key()})
        banks.append(bank)
    return banks


def _cached_bank(path: Path) -> SupportBank | None:
    """The bank cached at ``path``; None when there is none, or when the file is damaged (it is
    a cache: the bank is computed again and the file replaced)."""
    if path_kind(str(path)) != "file":
        return None
    try:
        return SupportBank.load(path)
    except MalformedSafetensors as error:
        logger.warning("%s; computing the support bank again", error)
        return None


def support_set_digest(samples: list[AnnotatedImage]) -> str:
    """16 hex digits over every support image's bytes and label map (the run records it)."""
    digest = hashlib.sha256()
    for sample in samples:
        digest.update(f"{sample.name}/{sample.sha256}/{sample.mask.shape}".encode())
        digest.update(np.ascontiguousarray(sample.mask).tobytes())
    return digest.hexdigest()[:16]
