"""Annotated images (an image and its label map, paired by file stem): listing, pairing, decoding.

Shared by SLiMe fitting and DiffewS support sets and training.

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
"""

from __future__ import annotations

import hashlib
import io
import logging
import posixpath
from dataclasses import dataclass

import numpy as np
from PIL import Image

from labeler.errors import UserError
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

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
MASK_EXTENSIONS = (".png", ".npy")
#: Lossy formats: listed among masks only to refuse them by name (compression changes labels).
LOSSY_MASK_EXTENSIONS = (".jpg", ".jpeg", ".webp")


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
            raise UserError(f"two images share the name {stem!r}: {images[stem]} and {path}")
        images[stem] = path
    image_set = set(image_files)
    masks: dict[str, str] = {}
    for path in mask_files:
        if path in image_set:
            continue
        stem = _stem(path)
        if stem in masks:
            raise UserError(f"two masks share the name {stem!r}: {masks[stem]} and {path}")
        masks[stem] = path
    missing = sorted(set(images) - set(masks))
    orphans = sorted(set(masks) - set(images))
    if missing or orphans:
        parts = []
        if missing:
            parts.append(f"images without a mask: {', '.join(missing[:5])}")
        if orphans:
            parts.append(f"masks without an image: {', '.join(orphans[:5])}")
        raise UserError("unpaired files (masks pair with images by file stem): " + "; ".join(parts))
    if not images:
        raise UserError("no annotated images found")
    lossy = [masks[stem] for stem in sorted(images) if masks[stem].lower().endswith(LOSSY_MASK_EXTENSIONS)]
    if lossy:
        raise UserError(f"mask {posixpath.basename(lossy[0])} is lossy (JPEG/WebP compression changes "
                         "label values): save label maps as PNG or .npy")
    return [(stem, images[stem], masks[stem]) for stem in sorted(images)]


def decode_mask(data: bytes, name: str) -> np.ndarray:
    """A label map from PNG (grey, 16-bit or palette) or ``.npy`` bytes, as (H, W) int64.

    A PNG's own EXIF orientation is applied (as for images); values are never converted.
    """
    if name.lower().endswith(".npy"):
        try:
            array = np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError as error:
            raise UserError(f"mask {name} is not a plain .npy array: {error}") from error
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim != 2 or not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
            if array.ndim == 2 and np.issubdtype(array.dtype, np.floating) and np.all(array == np.round(array)):
                return array.astype(np.int64)
            raise UserError(f"mask {name} must be a 2-D integer label map, got {array.dtype} {array.shape}")
        return array.astype(np.int64)
    with Image.open(io.BytesIO(data)) as image:
        orientation = exif_orientation(image)
        if image.mode in ("L", "P", "I", "I;16", "I;16B", "1"):
            return apply_orientation(np.array(image).astype(np.int64), orientation)
        array = np.array(image.convert("RGB"))
    if np.all(array == array[..., :1]):
        return apply_orientation(array[..., 0].astype(np.int64), orientation)
    raise UserError(
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
        raise UserError(f"{name} is not a readable image: {error}") from error


def _check_frame(stem: str, image: DecodedImage, mask: np.ndarray) -> None:
    """Refuse a mask whose size is not the upright image's, naming a stored-frame mask."""
    if mask.shape == (image.height, image.width):
        return
    if image.orientation >= 5 and mask.shape == (image.width, image.height):
        raise UserError(
            f"{stem}: mask is {mask.shape[1]}x{mask.shape[0]}, the size of the image as stored, "
            f"but the image has EXIF orientation {image.orientation} and is read upright as "
            f"{image.width}x{image.height}: masks are taken in the upright frame (as viewers "
            "show the image); rotate the mask the same way"
        )
    raise UserError(
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
                       list_files(mask_uri, MASK_EXTENSIONS + LOSSY_MASK_EXTENSIONS,
                                  storage_options=mask_options))
    loaded = []
    for stem, image_path, mask_path in pairs:
        image_bytes = read_file(image_path, image_options)
        mask_bytes = read_file(mask_path, mask_options)
        decoded = decode_rgb(image_bytes, posixpath.basename(image_path))
        mask = decode_mask(mask_bytes, posixpath.basename(mask_path))
        _check_frame(stem, decoded, mask)
        image = decoded.pixels
        if mask.min() < 0 or mask.max() >= num_classes:
            raise UserError(
                f"{stem}: mask values must be 0..{num_classes - 1} for {num_classes} classes, found "
                f"{int(mask.min())}..{int(mask.max())} (class 0 is background: --classes names it "
                f"first, e.g. background,{'...' if num_classes < 2 else 'a,b'})"
            )
        digest = hashlib.sha256(image_bytes).hexdigest()[:16]
        loaded.append(AnnotatedImage(stem, image, mask, digest))
    logger.info("loaded %d annotated images", len(loaded))
    return loaded


def _with_credentials(uri: str, storage_options: dict | None) -> tuple[str, dict]:
    """``uri`` without embedded credentials, and the storage options with them added."""
    clean, credentials = split_uri_credentials(uri)
    return clean, {**(storage_options or {}), **credentials}


def check_every_class_annotated(samples: list[AnnotatedImage], classes: tuple[str, ...]) -> None:
    """Every class but background (value 0) has a pixel in some mask.

    Raises:
        UserError: the first class without one, naming its value.
    """
    present = set()
    for sample in samples:
        present.update(int(value) for value in np.unique(sample.mask))
    for index, name in enumerate(classes[1:], start=1):
        if index not in present:
            raise UserError(
                f"class {name!r} (value {index}) has no pixel in any support mask: every class "
                "needs at least one annotated example"
            )
