"""SLiMe ("Segment Like Me", ICLR 2024): apply a learned embedding set to images.

An embedding set (see :mod:`labeler.methods.slime.embedding_set`) holds K-1 text embeddings, one per
non-background class, fit with ``labeler slime fit``. Inference follows the official code
(docs/slime.md, tables "What runs" and "Deliberate differences"): each image is squashed to the model size, cut into an
n x n grid of overlapping patches, each patch upsampled to the model size, VAE-sampled, noised to
t=100 and run through the UNet once with the learned conditioning (no unconditional half). The
cross-attention maps of the K class tokens and the WAS-attention (self-attention applied to those
maps, computed as a fused SDPA, see :mod:`labeler.methods.slime.capture`) then go through the
reference post-processing: class gate, background thresholding, per-class rescale, patch
averaging and argmax. Unlike the reference, labels are mapped back to the original resolution.

The pure functions come first; :class:`Slime` (the :class:`labeler.methods.base.Segmenter`) at the
bottom.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from labeler.metrics import mask_iou

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Layers: chosen by role and resolution, never by module name.
# --------------------------------------------------------------------------------------------

#: The reference layers (``--attention_layers_to_use`` defaults), as ``block/kind/side[:n]``
#: selectors (see :func:`labeler.attention.layers.resolve_layers`): every up-block
#: cross-attention at 16x16, the first two at 32x32 (the reference leaves out the third), every
#: up-block self-attention at 64x64. Sides are query grids at the model's native size (SD: 64
#: latent cells for 512 px).
DEFAULT_LAYERS: dict[str, tuple[str, ...]] = {
    "cross": ("up/cross/16", "up/cross/32:2"),
    "self": ("up/self/64",),
}

# --------------------------------------------------------------------------------------------
# Pure functions: class maps, WAS, patch grid, gate / threshold / rescale, patch averaging.
# --------------------------------------------------------------------------------------------


def class_probabilities(logits: Tensor) -> Tensor:
    """The training normalisation: softmax over the K classes of layer-averaged logits.

    Args:
        logits: (B, K, h, w).

    Returns:
        (B, K, h, w), channels summing to 1.
    """
    return logits.float().softmax(dim=1)


def weighted_attention_sum(attention: Tensor, class_maps: Tensor) -> Tensor:
    """WAS as the reference writes it: ``WAS_c(q) = sum_k P[q, k] r_c(k)`` (explicit product).

    Args:
        attention: (B, N, N) row-stochastic self-attention (row = query, column = key).
        class_maps: (B, K, h, w) with h * w = N.

    Returns:
        (B, K, h, w).
    """
    batch, classes, height, width = class_maps.shape
    flat = class_maps.reshape(batch, classes, height * width).transpose(1, 2)
    return (attention @ flat).transpose(1, 2).reshape(batch, classes, height, width)


def patch_grid(size: int, patch: int, per_side: int, cover_edges: bool = True) -> list[tuple[int, int, int, int]]:
    """Square patches ``(top, bottom, left, right)`` of an n x n grid on a ``size`` canvas.

    The reference uses stride ``(size - patch) // (n - 1)``; when that division is not exact its
    grid stops short of the right/bottom border. ``cover_edges`` spreads the starts evenly from 0
    to ``size - patch`` instead: identical wherever the division is exact (every documented
    reference configuration), and no uncovered border otherwise.

    Raises:
        ValueError: patch larger than the canvas, or n < 1.
    """
    if per_side < 1 or not 0 < patch <= size:
        raise ValueError(f"bad patch grid: size {size}, patch {patch}, {per_side} per side")
    if per_side == 1:
        starts = [0]
    elif cover_edges:
        starts = [round(i * (size - patch) / (per_side - 1)) for i in range(per_side)]
    else:
        stride = (size - patch) // (per_side - 1)
        starts = [i * stride for i in range(per_side)]
    return [(top, top + patch, left, left + patch) for top in starts for left in starts]


def gate_classes(class_maps: Tensor, threshold: float | None) -> Tensor:
    """Classes kept for a patch: those whose cross-attention maximum reaches ``threshold``.

    Args:
        class_maps: (B, K, h, w) inference cross-attention maps.
        threshold: the reference's ``--patch_threshold`` (0.2); None keeps every class.

    Returns:
        (B, K) bool.
    """
    maxima = class_maps.flatten(2).amax(dim=2)
    if threshold is None:
        return torch.ones_like(maxima, dtype=torch.bool)
    return maxima >= threshold


def threshold_row(weights: Tensor) -> Tensor:
    """Zero a map wherever it is at or below its own mean (the reference background threshold).

    Args:
        weights: (..., h, w).
    """
    mean = weights.flatten(-2).mean(dim=-1)[..., None, None]
    return torch.where(weights > mean, weights, torch.zeros_like(weights))


def inference_class_values(
    class_maps: Tensor,
    keep: Tensor,
    background_threshold: bool = True,
    threshold_first_kept: bool = False,
) -> Tensor:
    """The WAS weights at inference: the class maps, background row thresholded.

    The reference thresholds the *first kept* row, which is the background unless the background
    failed the gate; then it silently thresholds the first part instead. By default only the
    background row is thresholded (and only when kept); ``threshold_first_kept`` restores the
    reference behaviour.

    Args:
        class_maps: (B, K, h, w) inference cross-attention maps.
        keep: (B, K) bool from :func:`gate_classes`.

    Returns:
        (B, K, h, w).
    """
    if not background_threshold:
        return class_maps
    values = class_maps.clone()
    for row in range(class_maps.shape[0]):
        if threshold_first_kept:
            kept = torch.nonzero(keep[row]).flatten()
            if len(kept) == 0:
                continue
            target = int(kept[0])
        elif bool(keep[row, 0]):
            target = 0
        else:
            continue
        values[row, target] = threshold_row(class_maps[row, target])
    return values


def rescale_to_range(maps: Tensor, low: Tensor, high: Tensor) -> Tensor:
    """Per-class affine map of each map's [min, max] onto [low, high] (reference rescale).

    A non-finite or zero scale becomes 1e-7, as in the reference, so a flat map lands on
    ``low``.

    Args:
        maps: (K, h, w); low, high: (K,).

    Returns:
        (K, h, w).
    """
    flat = maps.flatten(1)
    minimum, maximum = flat.amin(dim=1), flat.amax(dim=1)
    scale = (high - low) / (maximum - minimum)
    scale = torch.where(torch.isfinite(scale) & (scale != 0), scale, torch.full_like(scale, 1e-7))
    return (maps - minimum[:, None, None]) * scale[:, None, None] + low[:, None, None]


def accumulate_patches(
    patch_maps: Tensor,
    keep: Tensor,
    boxes: Sequence[tuple[int, int, int, int]],
    size: int,
) -> tuple[Tensor, Tensor]:
    """Paste per-patch class maps onto a canvas; average where patches overlap.

    Args:
        patch_maps: (n_patches, K, h, w) per-patch maps (any h, w; resized bilinearly to each box).
        keep: (n_patches, K) bool: a class contributes to a patch only when kept.
        boxes: (top, bottom, left, right) per patch on the canvas.
        size: canvas side.

    Returns:
        the averaged maps (K, size, size) (0 where a class was never kept) and the per-class
        coverage counts (K, size, size).
    """
    classes = patch_maps.shape[1]
    total = torch.zeros(classes, size, size, dtype=torch.float32, device=patch_maps.device)
    count = torch.zeros_like(total)
    for maps, kept, (top, bottom, left, right) in zip(patch_maps, keep, boxes):
        resized = maps.float()[None]
        if resized.shape[-2:] != (bottom - top, right - left):
            resized = F.interpolate(resized, size=(bottom - top, right - left), mode="bilinear",
                                    align_corners=False)
        weight = kept.float()[:, None, None]
        total[:, top:bottom, left:right] += resized[0] * weight
        count[:, top:bottom, left:right] += weight
    return total / count.clamp_min(1e-7), count


def postprocess_patch(
    class_maps: Tensor,
    was: Tensor,
    keep: Tensor,
    rescale: bool = True,
    output_side: int | None = None,
) -> Tensor:
    """One patch's final class maps: WAS upsampled and rescaled to the cross-attention range.

    Args:
        class_maps: (K, h, w) inference cross-attention maps (before the background threshold).
        was: (K, h, w) WAS of the patch.
        keep: (K,) bool; rows of dropped classes are left as they are (never pasted).
        rescale: map each class's [min, max] onto its cross-attention [min, max].
        output_side: upsample WAS to this side first (the patch footprint), as the reference.

    Returns:
        (K, output_side, output_side) or (K, h, w).
    """
    maps = was.float()
    if output_side is not None and maps.shape[-1] != output_side:
        maps = F.interpolate(maps[None], size=(output_side, output_side), mode="bilinear",
                             align_corners=False)[0]
    if rescale:
        flat = class_maps.float().flatten(1)
        maps = rescale_to_range(maps, flat.amin(dim=1), flat.amax(dim=1))
    return maps


def patch_timesteps(timestep_range: tuple[int, int], generators: Sequence[torch.Generator]) -> Tensor:
    """One inference timestep per patch: the single value, or a draw from each patch's generator.

    A fixed timestep draws nothing, so the generators' VAE samples and noise are the same
    whether or not a range is in use (the draw comes after them).

    Args:
        timestep_range: inclusive ``(low, high)``.
        generators: one per patch.

    Returns:
        (P,) int64 timesteps.
    """
    low, high = timestep_range
    if low == high:
        return torch.full((len(generators),), low, dtype=torch.long)
    return torch.stack([torch.randint(low, high + 1, (), generator=g) for g in generators]).long()


def iou(prediction: np.ndarray, target: np.ndarray) -> float:
    """IoU of two boolean masks, as the reference (``|P & T| / (|P | T| + 1e-7)``)."""
    return mask_iou(prediction, target, smoothing=1e-7)


def mean_iou_present(prediction: np.ndarray, target: np.ndarray, num_classes: int) -> float:
    """The reference's per-image mIoU: mean IoU over the classes present in ``target``."""
    present = [c for c in range(num_classes) if np.any(target == c)]
    return float(np.mean([iou(prediction == c, target == c) for c in present]))
