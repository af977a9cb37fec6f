"""Turning decoded images into model input, and the size of the grid labels are computed at."""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

#: Resize modes: ``float`` (bilinear in float32, optionally antialiased) or ``reference``
#: (OpenCV ``INTER_LINEAR`` on uint8, as the SLiMe reference's albumentations ``Resize``).
RESIZE_MODES = ("float", "reference")


def resize_reference(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a uint8 image exactly as the SLiMe reference does: ``cv2.resize`` ``INTER_LINEAR``.

    OpenCV resizes uint8 with fixed-point weights (11 fractional bits per axis) and rounds the
    result to whole grey levels; it has no antialiasing, and an exact 2x downscale is averaged
    as ``INTER_AREA``. Calling OpenCV itself (already a dependency, for polygon export) is the
    only way to reproduce its SIMD rounding bit for bit on every platform, so this is not
    re-implemented.

    Args:
        image: (H, W, C) or (H, W) uint8.

    Returns:
        (height, width, C) or (height, width) uint8.
    """
    if image.dtype != np.uint8:
        raise ValueError(f"the reference resize works on uint8 images, got {image.dtype}")
    if image.shape[:2] == (height, width):
        return image
    resized = cv2.resize(np.ascontiguousarray(image), (width, height), interpolation=cv2.INTER_LINEAR)
    return resized.reshape(height, width, *image.shape[2:])


def resize_image(image: np.ndarray, size: int, antialias: bool = True, mode: str = "float") -> torch.Tensor:
    """Resize a uint8 image to ``size`` x ``size`` as float grey levels.

    Args:
        image: (H, W, 3) uint8.
        antialias: antialias a float downscale (ignored by ``reference``, which never does).
        mode: ``float`` (bilinear in float32, half-pixel centres) or ``reference``
            (:func:`resize_reference`: whole grey levels).

    Returns:
        (3, size, size) float32 in [0, 255].
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {mode!r}")
    if mode == "reference":
        image = resize_reference(image, size, size)
    tensor = torch.tensor(image).permute(2, 0, 1)[None].float()
    if tensor.shape[-2:] != (size, size):
        tensor = F.interpolate(
            tensor, size=(size, size), mode="bilinear", align_corners=False, antialias=antialias
        )
    return tensor[0]


def images_to_model_input(
    images: list[np.ndarray], size: int, antialias: bool = True, resize: str = "float"
) -> torch.Tensor:
    """Resize whole images (no crop) to ``size`` x ``size`` and scale to [-1, 1].

    The whole image is kept (aspect ratio is not preserved), so every pixel of a non-square image
    gets a label; the reference DiffSeg centre-crops instead, which would leave the sides
    unlabeled. ``antialias=False`` matches the reference's plain bilinear resize up to rounding;
    the default antialiases, which matters when large photos are shrunk to 512.
    ``resize="reference"`` resizes on uint8 as the SLiMe reference (see :func:`resize_image`).

    Args:
        images: (H_i, W_i, 3) uint8 RGB arrays.

    Returns:
        (B, 3, size, size) float32 in [-1, 1].
    """
    batch = [resize_image(image, size, antialias, resize) for image in images]
    return torch.stack(batch).div_(127.5).sub_(1.0).clamp_(-1.0, 1.0)


def label_grid_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """The size at which labels are computed: the original size, scaled down to ``max_side``."""
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))
