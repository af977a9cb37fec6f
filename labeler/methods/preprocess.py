"""Turning decoded images into model input, and the size of the grid labels are computed at."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def images_to_model_input(
    images: list[np.ndarray], size: int, antialias: bool = True
) -> torch.Tensor:
    """Resize whole images (no crop) to ``size`` x ``size`` and scale to [-1, 1].

    The whole image is kept (aspect ratio is not preserved), so every pixel of a non-square image
    gets a label; the reference DiffSeg centre-crops instead, which would leave the sides
    unlabeled. ``antialias=False`` matches the reference's plain bilinear resize; the default
    antialiases, which matters when large photos are shrunk to 512.

    Args:
        images: (H_i, W_i, 3) uint8 RGB arrays.

    Returns:
        (B, 3, size, size) float32 in [-1, 1].
    """
    batch = []
    for image in images:
        tensor = torch.tensor(image).permute(2, 0, 1)[None].float()
        if tensor.shape[-2:] != (size, size):
            tensor = F.interpolate(
                tensor, size=(size, size), mode="bilinear", align_corners=False, antialias=antialias
            )
        batch.append(tensor)
    return torch.cat(batch).div_(127.5).sub_(1.0).clamp_(-1.0, 1.0)


def label_grid_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """The size at which labels are computed: the original size, scaled down to ``max_side``."""
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))
