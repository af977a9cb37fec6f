"""Annotated images for SLiMe fitting: loading, pairing, and the reference augmentations.

Images and masks are listed and read through :mod:`labeler.io` like ``labeler run``'s inputs
(local paths or any fsspec URI, storage options and retries; a folder, searched recursively with
hidden files skipped, or a single file). Images are decoded by :func:`labeler.io.decode.decode_image`,
so fit and run see the same pixels: EXIF orientation applied, alpha composited on white. A mask
is a label map with values 0..K-1 (0 = background): a single-channel PNG (8/16-bit grey or
palette indices) or a ``.npy`` integer array (read with ``allow_pickle=False``); it is never
colour-converted. Masks pair with images by file stem and are taken in the frame of the upright
image (as viewers show it): the image's EXIF orientation is not applied to its mask (a PNG mask's
own EXIF orientation is). A mask that has the size of the image as stored, not as shown, is
refused with a message saying so.

The augmentations follow the reference's training pipeline (README section "SLiMe", row "augmentation"),
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

import hashlib
import io
import logging
import math
import posixpath
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from labeler.io.decode import (
    DecodedImage,
    ImageDecodeError,
    apply_orientation,
    decode_image,
    exif_orientation,
)
from labeler.io.listing import list_files
from labeler.io.reading import read_file
from labeler.io.uris import split_uri_credentials
from labeler.methods.preprocess import RESIZE_MODES, resize_image, resize_reference

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
MASK_EXTENSIONS = (".png", ".npy")


@dataclass(frozen=True)
class AnnotatedImage:
    """One training image and its label map.

    Attributes:
        name: the shared file stem.
        image: (H, W, 3) uint8 RGB.
        mask: (H, W) int64, values 0..K-1.
        sha256: 16 hex digits of the image file's bytes (fit provenance).
    """

    name: str
    image: np.ndarray
    mask: np.ndarray
    sha256: str


# --------------------------------------------------------------------------------------------
# Loading and pairing.
# --------------------------------------------------------------------------------------------


def _stem(path: str) -> str:
    return posixpath.splitext(posixpath.basename(path))[0]


def pair_files(image_files: list[str], mask_files: list[str]) -> list[tuple[str, str, str]]:
    """Pair images and masks by stem.

    A file listed as an image never counts as its own mask (images and ``.npy`` masks may share a
    folder, as in the reference).

    Returns:
        ``(stem, image, mask)`` sorted by stem.

    Raises:
        ValueError: duplicate stems, images without masks, masks without images.
    """
    images: dict[str, str] = {}
    for path in image_files:
        stem = _stem(path)
        if stem in images:
            raise ValueError(f"two images share the name {stem!r}: {images[stem]} and {path}")
        images[stem] = path
    image_set = set(image_files)
    masks: dict[str, str] = {}
    for path in mask_files:
        if path in image_set:
            continue
        stem = _stem(path)
        if stem in masks:
            raise ValueError(f"two masks share the name {stem!r}: {masks[stem]} and {path}")
        masks[stem] = path
    missing = sorted(set(images) - set(masks))
    orphans = sorted(set(masks) - set(images))
    if missing or orphans:
        parts = []
        if missing:
            parts.append(f"images without a mask: {', '.join(missing[:5])}")
        if orphans:
            parts.append(f"masks without an image: {', '.join(orphans[:5])}")
        raise ValueError("unpaired files (masks pair with images by file stem): " + "; ".join(parts))
    if not images:
        raise ValueError("no annotated images found")
    return [(stem, images[stem], masks[stem]) for stem in sorted(images)]


def decode_mask(data: bytes, name: str) -> np.ndarray:
    """A label map from PNG (grey, 16-bit or palette) or ``.npy`` bytes, as (H, W) int64.

    A PNG's own EXIF orientation is applied (as for images); values are never converted.
    """
    if name.lower().endswith(".npy"):
        try:
            array = np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError as error:
            raise ValueError(f"mask {name} is not a plain .npy array: {error}") from error
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim != 2 or not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
            if array.ndim == 2 and np.issubdtype(array.dtype, np.floating) and np.all(array == np.round(array)):
                return array.astype(np.int64)
            raise ValueError(f"mask {name} must be a 2-D integer label map, got {array.dtype} {array.shape}")
        return array.astype(np.int64)
    with Image.open(io.BytesIO(data)) as image:
        orientation = exif_orientation(image)
        if image.mode in ("L", "P", "I", "I;16", "I;16B", "1"):
            return apply_orientation(np.array(image).astype(np.int64), orientation)
        array = np.array(image.convert("RGB"))
    if np.all(array == array[..., :1]):
        return apply_orientation(array[..., 0].astype(np.int64), orientation)
    raise ValueError(
        f"mask {name} is a colour image; masks must be single-channel label maps (values 0..K-1)"
    )


def decode_rgb(data: bytes, name: str) -> DecodedImage:
    """Decode an image file exactly as ``labeler run`` does (upright, alpha on white).

    Returns:
        the decoded image: ``pixels`` (H, W, 3) uint8 RGB, upright.

    Raises:
        ValueError: the bytes are not a readable image (the reason names the file).
    """
    try:
        return decode_image(data, min_side=1)
    except ImageDecodeError as error:
        raise ValueError(f"{name} is not a readable image: {error}") from error


def _check_frame(stem: str, image: DecodedImage, mask: np.ndarray) -> None:
    """Refuse a mask whose size is not the upright image's, naming a stored-frame mask."""
    if mask.shape == (image.height, image.width):
        return
    if image.orientation >= 5 and mask.shape == (image.width, image.height):
        raise ValueError(
            f"{stem}: mask is {mask.shape[1]}x{mask.shape[0]}, the size of the image as stored, "
            f"but the image has EXIF orientation {image.orientation} and is read upright as "
            f"{image.width}x{image.height}: masks are taken in the upright frame (as viewers "
            "show the image); rotate the mask the same way"
        )
    raise ValueError(
        f"{stem}: mask is {mask.shape[1]}x{mask.shape[0]} but the image is "
        f"{image.width}x{image.height} (width x height)"
    )


def load_annotated(
    images: str, masks: str, num_classes: int, storage_options: dict | None = None
) -> list[AnnotatedImage]:
    """Read and check every annotated image.

    Args:
        images, masks: folders (searched recursively) or files; local paths or fsspec URIs.
            Credentials embedded in them are moved to the storage options.
        num_classes: K, mask values must be in 0..K-1.
        storage_options: fsspec options (endpoint, credentials) for both.

    Raises:
        FileNotFoundError: ``images`` or ``masks`` does not exist.
        ValueError: unpaired files, unreadable files, size mismatches, mask values outside
            0..K-1.
    """
    image_uri, image_options = _with_credentials(images, storage_options)
    mask_uri, mask_options = _with_credentials(masks, storage_options)
    pairs = pair_files(list_files(image_uri, IMAGE_EXTENSIONS, storage_options=image_options),
                       list_files(mask_uri, MASK_EXTENSIONS, storage_options=mask_options))
    loaded = []
    for stem, image_path, mask_path in pairs:
        image_bytes = read_file(image_path, image_options)
        mask_bytes = read_file(mask_path, mask_options)
        decoded = decode_rgb(image_bytes, posixpath.basename(image_path))
        mask = decode_mask(mask_bytes, posixpath.basename(mask_path))
        _check_frame(stem, decoded, mask)
        image = decoded.pixels
        if mask.min() < 0 or mask.max() >= num_classes:
            raise ValueError(
                f"{stem}: mask values must be 0..{num_classes - 1} for {num_classes} classes, found "
                f"{int(mask.min())}..{int(mask.max())}"
            )
        digest = hashlib.sha256(image_bytes).hexdigest()[:16]
        loaded.append(AnnotatedImage(stem, image, mask, digest))
    logger.info("loaded %d annotated images", len(loaded))
    return loaded


def _with_credentials(uri: str, storage_options: dict | None) -> tuple[str, dict]:
    """``uri`` without embedded credentials, and the storage options with them added."""
    clean, credentials = split_uri_credentials(uri)
    return clean, {**(storage_options or {}), **credentials}


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
            raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {self.resize!r}")
        if not 0 < self.min_crop_ratio <= 1:
            raise ValueError("min_crop_ratio must be in (0, 1]")
        if self.size < 8 or self.mask_size < 1:
            raise ValueError("size and mask_size must be positive")


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
