"""The reference augmentations of SLiMe fitting, over annotated images
(:mod:`labeler.methods.annotations`).

The augmentations follow the reference's training pipeline (docs/slime.md, row "augmentation"),
driven by one seeded ``torch.Generator``: resize to the fit size, horizontal flip (p=0.5),
Gaussian blur (p=0.5, image only; kernel 1 with probability 0.2, 3 or 5 with 0.4 each, as the
reference's draw of an odd size from 1..5), a random square crop of side
U[min_crop_ratio, 1) x size that keeps > 30% of one target class's pixels, resize back, rotation
(p=0.5, +-30 degrees, zero border), and the mask nearest-resized to the loss resolution.
Resizes are bilinear in float (antialiased by default) or, with ``resize="reference"``, OpenCV's
uint8 ``INTER_LINEAR`` as the reference (the blurred image is then rounded to whole grey levels
before the crop is resized back, as the reference's uint8 pipeline does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from labeler.errors import UserError
from labeler.methods.annotations import AnnotatedImage
from labeler.methods.preprocess import RESIZE_MODES, resize_image, resize_reference

# --------------------------------------------------------------------------------------------
# Augmentation.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AugmentSettings:
    """The reference training augmentations (``--min_crop_ratio`` etc.).

    Attributes:
        size: the side images are resized to (the model size, 512 for SD).
        mask_size: the loss resolution (reference ``--train_mask_size`` 64).
        min_crop_ratio: lower bound of the crop side fraction (reference default 0.8; its PASCAL
            car and CelebA configs use 0.6).
        rotation: maximum rotation in degrees (reference 30; 10 for CelebA).
        flip_p, blur_p, rotate_p: probabilities (reference 0.5 each).
        crop_min_fraction: the crop keeps more than this fraction of the target class's pixels.
        crop_tries: crop draws before the best one so far is taken (the reference loops forever).
        enabled: False = only resize (no augmentation).
        resize: ``float`` or ``reference`` (see :func:`labeler.methods.preprocess.resize_image`),
            for the crop resized back to ``size``.
    """

    size: int = 512
    mask_size: int = 64
    min_crop_ratio: float = 0.8
    rotation: float = 30.0
    flip_p: float = 0.5
    blur_p: float = 0.5
    rotate_p: float = 0.5
    crop_min_fraction: float = 0.3
    crop_tries: int = 100
    enabled: bool = True
    resize: str = "float"

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise UserError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {self.resize!r}")
        if not 0 < self.min_crop_ratio <= 1:
            raise UserError("min_crop_ratio must be in (0, 1]")
        if self.size < 8 or self.mask_size < 1:
            raise UserError("size and mask_size must be positive")


def prepare(
    sample: AnnotatedImage, size: int, antialias: bool = True, resize: str = "float"
) -> tuple[Tensor, Tensor]:
    """Resize an annotated image once to the fit size (image bilinear, mask nearest).

    Args:
        antialias, resize: see :func:`labeler.methods.preprocess.resize_image` (the same
            resize as ``labeler run``'s).

    Returns:
        image (3, size, size) float32 in [0, 255] and mask (size, size) int64.
    """
    image = resize_image(sample.image, size, antialias, resize)
    mask = torch.from_numpy(sample.mask)[None, None].float()
    mask = F.interpolate(mask, size=(size, size), mode="nearest")
    return image.clamp(0, 255), mask[0, 0].long()


def _uniform(generator: torch.Generator, low: float = 0.0, high: float = 1.0) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _randint(generator: torch.Generator, low: int, high: int) -> int:
    """Uniform integer in [low, high] (inclusive)."""
    return int(torch.randint(low, high + 1, (), generator=generator))


def blur_kernel_size(generator: torch.Generator) -> int:
    """The reference's blur kernel draw: uniform in 1..5, an even size rounded up to odd.

    So 1 with probability 0.2, 3 and 5 with 0.4 each (albumentations ``GaussianBlur`` with
    ``blur_limit=(1, 5)``).
    """
    size = _randint(generator, 1, 5)
    return size if size % 2 else size + 1


def _resize_crop(image: Tensor, size: int, resize: str) -> Tensor:
    """A (3, h, w) float crop in [0, 255] resized to (3, size, size), as :func:`prepare`."""
    if resize == "reference":
        grey = image.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
        return torch.from_numpy(resize_reference(grey, size, size)).permute(2, 0, 1).float()
    return F.interpolate(image[None], size=(size, size), mode="bilinear", align_corners=False)[0]


def gaussian_blur(image: Tensor, kernel: int) -> Tensor:
    """Separable Gaussian blur with OpenCV's sigma for a kernel size (reflect border).

    Args:
        image: (C, H, W).
    """
    if kernel <= 1:
        return image
    sigma = 0.3 * ((kernel - 1) * 0.5 - 1) + 0.8
    offsets = torch.arange(kernel, dtype=torch.float32) - (kernel - 1) / 2
    weights = torch.exp(-(offsets**2) / (2 * sigma**2))
    weights = weights / weights.sum()
    channels = image.shape[0]
    padded = F.pad(image[None], (kernel // 2,) * 4, mode="reflect")
    horizontal = weights.view(1, 1, 1, kernel).repeat(channels, 1, 1, 1)
    vertical = weights.view(1, 1, kernel, 1).repeat(channels, 1, 1, 1)
    blurred = F.conv2d(F.conv2d(padded, horizontal, groups=channels), vertical, groups=channels)
    return blurred[0]


def choose_crop(
    mask: Tensor, target: int, side: int, generator: torch.Generator, min_fraction: float, tries: int
) -> tuple[int, int]:
    """Top-left corner of a ``side`` square crop holding > ``min_fraction`` of class ``target``.

    Draws up to ``tries`` positions; returns the first that qualifies, else the best seen. An
    absent target imposes no constraint.
    """
    size = mask.shape[0]
    target_mask = mask == target
    total = int(target_mask.sum())
    best, best_fraction = (0, 0), -1.0
    for _ in range(max(1, tries)):
        top, left = _randint(generator, 0, size - side), _randint(generator, 0, size - side)
        if total == 0:
            return top, left
        fraction = int(target_mask[top : top + side, left : left + side].sum()) / total
        if fraction > min_fraction:
            return top, left
        if fraction > best_fraction:
            best, best_fraction = (top, left), fraction
    return best


def rotate(image: Tensor, mask: Tensor, degrees: float) -> tuple[Tensor, Tensor]:
    """Rotate about the centre with a zero border (image bilinear, mask nearest)."""
    angle = math.radians(degrees)
    theta = torch.tensor([[math.cos(angle), -math.sin(angle), 0.0],
                          [math.sin(angle), math.cos(angle), 0.0]], dtype=torch.float32)[None]
    grid = F.affine_grid(theta, [1, 1, *image.shape[-2:]], align_corners=False)
    image = F.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    mask = F.grid_sample(mask[None, None].float(), grid, mode="nearest", padding_mode="zeros",
                         align_corners=False)[0, 0].long()
    return image, mask


def augment(
    image: Tensor, mask: Tensor, settings: AugmentSettings, generator: torch.Generator, target: int
) -> tuple[Tensor, Tensor]:
    """One training sample from a prepared image (see :func:`prepare`).

    Args:
        image: (3, S, S) float in [0, 255]; mask: (S, S) int64.
        target: the class the crop must keep > 30% of (cycled over classes by the caller).

    Returns:
        pixels (3, S, S) float32 in [-1, 1] and mask (mask_size, mask_size) int64.
    """
    size = settings.size
    if settings.enabled:
        if _uniform(generator) < settings.flip_p:
            image, mask = image.flip(-1), mask.flip(-1)
        if _uniform(generator) < settings.blur_p:
            image = gaussian_blur(image, blur_kernel_size(generator))
        side = max(1, int(_uniform(generator, settings.min_crop_ratio, 1.0) * size))
        top, left = choose_crop(mask, target, side, generator, settings.crop_min_fraction, settings.crop_tries)
        image = image[:, top : top + side, left : left + side]
        mask = mask[top : top + side, left : left + side]
        if side != size:
            image = _resize_crop(image, size, settings.resize)
            mask = F.interpolate(mask[None, None].float(), size=(size, size), mode="nearest")[0, 0].long()
        if _uniform(generator) < settings.rotate_p:
            image, mask = rotate(image, mask, _uniform(generator, -settings.rotation, settings.rotation))
    if mask.shape[-1] != settings.mask_size:
        mask = F.interpolate(mask[None, None].float(), size=(settings.mask_size,) * 2, mode="nearest")[0, 0].long()
    pixels = (image / 127.5 - 1.0).clamp(-1.0, 1.0)
    return pixels, mask
