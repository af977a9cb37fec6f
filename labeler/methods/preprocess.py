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


def _float_pixels(image: np.ndarray, channels_first: bool) -> torch.Tensor:
    """A float32 copy of a uint8 image, made by NumPy in one pass (uint8 -> float32 is exact).

    NumPy writes into the tensor's own memory, so a read-only decoded array needs no extra copy
    (``torch.from_numpy`` would warn on it). The resize reads channels-last memory (an (H, W, 3)
    copy, the cheaper cast; ``F.interpolate``'s floats do not depend on the layout and its
    channels-last kernels are as fast or faster on images not in cache); an image that needs no
    resize is stored channels-first, as the batch it is divided into.

    Args:
        image: (H, W, 3) uint8.
        channels_first: store the copy as (3, H, W) (contiguous) instead of (H, W, 3).

    Returns:
        (1, 3, H, W) float32 in [0, 255], on the CPU.
    """
    height, width = image.shape[:2]
    if channels_first:
        pixels = torch.empty((3, height, width))
        np.copyto(pixels.numpy(), image.transpose(2, 0, 1), casting="unsafe")
        return pixels[None]
    pixels = torch.empty((height, width, 3))
    np.copyto(pixels.numpy(), image, casting="unsafe")
    return pixels.permute(2, 0, 1)[None]


def _uploaded_pixels(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """The uint8 image on an accelerator as float32: one host copy of its bytes (into pinned
    memory for CUDA, whose upload then does not wait), the conversion on the device.

    The pinned block goes back to PyTorch's host allocator, which reuses it only once the
    upload recorded on the stream has finished.

    Args:
        image: (H, W, 3) uint8.

    Returns:
        (1, 3, H, W) float32 in [0, 255] on ``device`` (a channels-last view).
    """
    pinned = device.type == "cuda"
    host = torch.empty(image.shape, dtype=torch.uint8, pin_memory=pinned)
    np.copyto(host.numpy(), image)
    return host.to(device, non_blocking=pinned).permute(2, 0, 1)[None].float()


def resize_image(image: np.ndarray, size: int, antialias: bool = True, mode: str = "float",
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """Resize a uint8 image to ``size`` x ``size`` as float grey levels.

    On the CPU the result is bit for bit what ``F.interpolate`` gives on the image converted
    to float32. On an accelerator only the uint8 bytes are copied from the host and the
    conversion and resize run there; the float results then differ from the CPU's by float
    rounding only (other kernels, another summation order): the GPU test allows 1e-5 in the
    [-1, 1] model input. ``reference``
    always resizes on the CPU (OpenCV); its uint8 result is then uploaded.

    Args:
        image: (H, W, 3) uint8.
        antialias: antialias a float downscale (ignored by ``reference``, which never does).
        mode: ``float`` (bilinear in float32, half-pixel centres) or ``reference``
            (:func:`resize_reference`: whole grey levels).
        device: where the resize runs and the result lives.

    Returns:
        (3, size, size) float32 in [0, 255], on ``device``.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {mode!r}")
    if mode == "reference":
        image = resize_reference(image, size, size)
    device = torch.device(device)
    unchanged = image.shape[:2] == (size, size)
    if device.type != "cpu":
        pixels = _uploaded_pixels(image, device)
    else:
        pixels = _float_pixels(image, channels_first=unchanged)
    if not unchanged:
        pixels = F.interpolate(
            pixels, size=(size, size), mode="bilinear", align_corners=False, antialias=antialias
        )
    return pixels[0]


def images_to_model_input(
    images: list[np.ndarray], size: int, antialias: bool = True, resize: str = "float",
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Resize whole images (no crop) to ``size`` x ``size`` and scale to [-1, 1].

    The whole image is kept (aspect ratio is not preserved), so every pixel of a non-square image
    gets a label; the reference DiffSeg centre-crops instead, which would leave the sides
    unlabeled. ``antialias=False`` matches the reference's plain bilinear resize up to rounding;
    the default antialiases, which matters when large photos are shrunk to 512.
    ``resize="reference"`` resizes on uint8 as the SLiMe reference (see :func:`resize_image`).
    With ``device`` an accelerator, the host only copies each image's bytes (see
    :func:`resize_image` for how far the results may differ from the CPU's).

    Args:
        images: (H_i, W_i, 3) uint8 RGB arrays.
        device: where the resize runs and the result lives (the model's device).

    Returns:
        (B, 3, size, size) float32 in [-1, 1], on ``device``.
    """
    batch = torch.empty((len(images), 3, size, size), dtype=torch.float32, device=device)
    for row, image in zip(batch, images):
        torch.div(resize_image(image, size, antialias, resize, device), 127.5, out=row)
    return batch.sub_(1.0).clamp_(-1.0, 1.0)


def label_grid_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """The size at which labels are computed: the original size, scaled down to ``max_side``."""
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))
