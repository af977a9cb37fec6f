"""DiffewS, the pure parts: one-step image-to-mask (OI2M), mask decoding and the per-class decision.

DiffewS predicts a mask *image* in one UNet step. The reference runs a DDIM scheduler whose betas
are all 1 (so every alpha-bar is 0) with v-prediction at t = 1; its predicted clean sample is then
``sqrt(abar) * x_t - sqrt(1 - abar) * v = -v``: the mask latent is the negated UNet output
(:func:`mask_latent_from_output`). The VAE decodes it to RGB (white = foreground), which is clipped
to [-1, 1], mapped to [0, 1] and averaged over channels: the soft map of the class
(:func:`soft_maps_from_decoded`).

A soft map becomes a mask by one of two rules (:class:`DecisionRule`):

- ``relative`` (the reference's decision, pixel for pixel): the reference writes the decoded mask
  as a uint8 RGB image (``(x * 0.5 + 0.5) * 255`` truncated) and reads it back as ``level / 255``;
  a pixel is foreground iff the mean of its three channels is ``> ratio * peak``, the peak being
  the max over all three channels of the image (:func:`reference_soft_maps`). The max is taken per
  image (the reference takes it over its whole batch, which only matches at batch 1). It always
  marks the brightest region, even when the class is absent.
- ``absolute`` (the default): the class is present iff ``max(m) >= presence``, and then a pixel is
  foreground iff ``m > level``. A query without the class gets no annotation.

Several classes may claim a pixel; the one with the highest soft value wins
(:func:`resolve_classes`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from labeler.methods.diffews.settings import DEFAULT_LEVEL, DEFAULT_PRESENCE, REFERENCE_RATIO


def mask_latent_from_output(unet_output: Tensor) -> Tensor:
    """OI2M: the predicted mask latent from the UNet's v-prediction at t = 1 with alpha-bar 0.

    Args:
        unet_output: (B, 4, h, w) the UNet output for the clean query latent.

    Returns:
        (B, 4, h, w) the mask latent (scaled like VAE latents), ``-unet_output``.
    """
    return -unet_output


def soft_maps_from_decoded(decoded: Tensor) -> Tensor:
    """Soft foreground maps from VAE-decoded mask images.

    Args:
        decoded: (B, 3, H, W) VAE decoder output (nominally in [-1, 1], any float dtype).

    Returns:
        (B, H, W) float32 in [0, 1]: clip to [-1, 1], map to [0, 1], mean over channels.
    """
    return ((decoded.float().clamp(-1.0, 1.0) + 1.0) / 2.0).mean(dim=1)


def reference_soft_maps(decoded: Tensor) -> tuple[Tensor, Tensor]:
    """Soft maps and peaks as the reference reads them from its uint8 mask image.

    The reference clips to [-1, 1], computes ``(x * 0.5 + 0.5) * 255`` in float32, stores it as
    uint8 (numpy truncation) and reads it back with ``to_tensor`` (``level / 255`` in float32); its
    decision is ``mean over channels > ratio * max over the 3-channel tensor``.

    Args:
        decoded: (B, 3, H, W) VAE decoder output.

    Returns:
        soft (B, H, W) float32: the channel mean of the read-back levels; and peak (B,) float32:
        the max over channels and pixels of the read-back levels.
    """
    shifted = decoded.float().clamp(-1.0, 1.0) * 0.5 + 0.5
    levels = (shifted * 255).clamp(0, 255).to(torch.uint8)
    read = levels.float() / 255
    return read.mean(dim=1), read.amax(dim=(1, 2, 3))


def decode_mask_images(vae, mask_latents: Tensor) -> Tensor:
    """VAE-decode mask latents into mask images.

    Args:
        vae: a diffusers ``AutoencoderKL``.
        mask_latents: (B, 4, h, w) scaled latents (see :func:`mask_latent_from_output`).

    Returns:
        (B, 3, 8h, 8w) in the VAE's dtype, nominally in [-1, 1].
    """
    scaled = mask_latents / vae.config.scaling_factor
    return vae.decode(scaled.to(vae.dtype)).sample


def decode_soft_maps(vae, mask_latents: Tensor) -> Tensor:
    """VAE-decode mask latents into soft maps (:func:`soft_maps_from_decoded`).

    Returns:
        (B, 8h, 8w) float32 in [0, 1].
    """
    return soft_maps_from_decoded(decode_mask_images(vae, mask_latents))


@dataclass(frozen=True)
class DecisionRule:
    """How a soft map becomes a foreground mask.

    Attributes:
        kind: ``absolute`` (absence-aware, default) or ``relative`` (reference parity).
        level: ``absolute``: pixel threshold on m.
        presence: ``absolute``: minimum max(m) for the class to be present at all.
        ratio: ``relative``: pixel threshold as a fraction of the per-image max.
    """

    kind: Literal["absolute", "relative"] = "absolute"
    level: float = DEFAULT_LEVEL
    presence: float = DEFAULT_PRESENCE
    ratio: float = REFERENCE_RATIO

    def __post_init__(self) -> None:
        if self.kind not in ("absolute", "relative"):
            raise ValueError(f"decision rule must be 'absolute' or 'relative', got {self.kind!r}")
        for name in ("level", "presence", "ratio"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")


def decided_soft_maps(decoded: Tensor, rule: DecisionRule) -> tuple[Tensor, Tensor]:
    """The soft maps and peaks ``rule`` decides on.

    Args:
        decoded: (B, 3, H, W) VAE decoder output.

    Returns:
        soft (B, H, W) float32 in [0, 1] and peak (B,): for ``relative``, the reference's uint8
        read-back (:func:`reference_soft_maps`); for ``absolute``, the float channel mean and its max.
    """
    if rule.kind == "relative":
        return reference_soft_maps(decoded)
    soft = soft_maps_from_decoded(decoded)
    return soft, soft.amax(dim=(-2, -1))


def foreground(soft: Tensor, rule: DecisionRule, peak: Tensor | None = None) -> Tensor:
    """Foreground masks of soft maps under ``rule``.

    Args:
        soft: (..., H, W) float in [0, 1].
        peak: (...,) each map's peak (:func:`decided_soft_maps`); None = the map's own max
            (over the last two axes).

    Returns:
        (..., H, W) bool.
    """
    peak = soft.amax(dim=(-2, -1)) if peak is None else peak.to(soft.device)
    peak = peak[..., None, None]
    if rule.kind == "relative":
        return soft > peak * rule.ratio
    return (soft > rule.level) & (peak >= rule.presence)


def resolve_classes(soft: Tensor, rule: DecisionRule, peak: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One label per pixel from the soft maps of C classes of one image.

    Args:
        soft: (C, H, W) float in [0, 1], one soft map per class.
        peak: (C,) the maps' peaks (see :func:`foreground`); None = each map's own max.

    Returns:
        labels (H, W) int64: the class index 0..C-1 with the highest soft value among the classes
        whose mask covers the pixel, ``-1`` where none does; and confidence (H, W) float32, the
        winner's soft value (0 where unlabeled).
    """
    masks = foreground(soft, rule, peak)
    claimed = torch.where(masks, soft.float(), torch.full_like(soft, -1.0, dtype=torch.float32))
    confidence, labels = claimed.max(dim=0)
    covered = masks.any(dim=0)
    labels = torch.where(covered, labels, torch.full_like(labels, -1))
    return labels, torch.where(covered, confidence, torch.zeros_like(confidence))


def resize_soft_maps(soft: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of soft maps (before thresholding, so masks are decided at ``size``).

    Args:
        soft: (C, H, W) float.
        size: (height, width).

    Returns:
        (C, height, width) float32 in the input's range.
    """
    if tuple(soft.shape[-2:]) == tuple(size):
        return soft.float()
    resized = F.interpolate(soft[None].float(), size=size, mode="bilinear", align_corners=False)
    return resized[0]
