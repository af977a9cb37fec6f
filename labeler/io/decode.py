"""Decode untrusted image bytes into upright RGB ``uint8`` arrays.

:func:`decode_image` is the single entry point used by the pipeline. It either returns a
:class:`DecodedImage` or raises :class:`ImageDecodeError` whose ``reason`` is one of the stable
machine codes in :data:`DECODE_FAILURE_REASONS`. Those codes are written to ``images.parquet``
(column ``reason``), so they must not change casually.

It is labeler's only image decoder: ``labeler run`` (the shard's input), ``labeler slime fit``
(:mod:`labeler.methods.slime.data`) and ``labeler preview`` decode with it, so one file gives the
same pixels everywhere. :func:`apply_orientation` orients arrays drawn in an image's stored frame.

Pillow parses every header (size, mode, EXIF) and decodes every format. The pixels of the common
JPEGs (8-bit, Huffman-coded, gray or YCbCr) are decoded by libjpeg-turbo's TurboJPEG API instead
(:mod:`labeler.io.jpeg`, through ``simplejpeg``): the same pixels Pillow's libjpeg-turbo gives,
at the same DCT scale, for less CPU; anything it is not sure of, or that libjpeg warns about, is
decoded by Pillow as before.

Policies (documented choices)
-----------------------------
* **Orientation.** The EXIF ``Orientation`` tag (values 1-8; JPEG, PNG ``eXIf``, WebP, TIFF) is
  applied, so the array is what image viewers show. ``width``/``height`` are those of the upright
  image (``pixels.shape[1]``/``pixels.shape[0]``). Missing, malformed or out-of-range values are
  treated as 1 (no transform).
* **Alpha.** Transparent images (``RGBA``, ``LA``, ``PA``, premultiplied modes, palette or
  ``L``/``RGB`` images with a ``tRNS`` transparency entry) are **composited on white**. Dropping
  alpha would expose whatever colour an encoder left under fully transparent pixels (often black
  or garbage); white is what most viewers and web pages show for product shots and logos.
* **16-bit integer** (``I;16*`` modes: 16-bit grayscale PNG/TIFF) is scaled by ``round(v / 257)``,
  i.e. the full 0..65535 range maps onto 0..255 (65535 -> 255, 32768 -> 128). 16-bit RGB(A) PNGs
  are reduced to 8 bits by Pillow itself with the same mapping (high byte).
* **32-bit integer** (``I``) and **32-bit float** (``F``) have no fixed range, so a documented
  heuristic is used: integers within 0..255 are taken as is, within 0..65535 scaled like 16-bit,
  otherwise min-max normalised; floats within 0..1 are multiplied by 255, within 0..255 taken as
  is, otherwise min-max normalised. NaN becomes 0, +/-inf are clipped to the finite range. A
  reduced image (below) is reduced first and the rule applied to its box means.
* **CMYK** JPEGs (Adobe inverted ones included) are converted with their embedded ICC profile
  when there is one (LittleCMS via ``PIL.ImageCms``), else with Pillow's naive formula. ICC
  profiles of RGB images are not applied (colour accuracy does not change segmentation).
* **Animated** GIF, WebP, APNG and multi-page TIFF / MPO: only the first frame (page) is decoded.
* **Formats.** Only JPEG (and MPO), PNG (and APNG), GIF, WebP, BMP, TIFF and AVIF (when Pillow is
  built with it) are decoded; the format is sniffed from the bytes, not the file name. Other
  formats Pillow knows (PSD, EPS, ICO, ...) fail with ``unsupported_format``: this keeps the
  attack surface small (EPS would even start Ghostscript).
* **Size limits.** ``max_pixels`` (default :data:`DEFAULT_MAX_PIXELS`, Pillow's own default
  89,478,485 px, about 268 MB as RGB) is checked against the dimensions from the header before
  any pixel data is decoded. Pillow independently refuses anything above ``2 *
  PIL.Image.MAX_IMAGE_PIXELS`` while parsing the header; this module never changes that global,
  so a ``max_pixels`` above it is capped there (also reported as ``too_many_pixels``). Images
  whose shorter side is below ``min_side`` (default :data:`DEFAULT_MIN_SIDE` = 8 px) fail with
  ``too_small``: Stable Diffusion works on a 64x64 latent of a 512x512 resize, and such slivers
  produce meaningless labels. Pass ``min_side=1`` to accept every non-empty image.
* **Memory bound.** With ``max_decoded_pixels`` (the runtime passes
  :data:`DEFAULT_MAX_DECODED_PIXELS`, 16.8 Mpx) a larger image is downscaled while it is decoded:
  a JPEG at DCT scale 1/2, 1/4 or 1/8 (the decoder itself works at that scale), any
  other format by an integer box reduce right after its pixel data is read, strip by strip
  (about 1 Mpx a strip), before the conversion to RGB. The peak memory of one decode is then at
  most Pillow's buffer of the stored pixels (a JPEG's: of the drafted ones; libjpeg-turbo's
  decode holds 3 bytes per drafted pixel, and box-reduces them strip by strip), ``B`` bytes per
  pixel of the mode Pillow holds, plus 16 bytes per decoded pixel (the reduced image and its
  conversion to 8-bit RGB, alpha composited on white), plus one strip's working set (< 32 MB).
  ``B`` is 1 for bilevel, ``L`` and ``P``; 2 for 16-bit gray (``I;16``); 4 for every other mode:
  ``RGB`` (Pillow pads it to 4 bytes), ``RGBA``, ``CMYK``, 32-bit ``I`` and ``F``, and 16-bit
  RGB(A) and gray+alpha PNGs, which Pillow holds at 8 bits per channel. So with the defaults one
  image peaks below 4 x 89.5 Mpx + 16 x 16.8 Mpx + 32 MB = 0.66 GB whatever its mode (a 16-bit
  9400x9400 PNG: 0.21 GB measured; 8-bit gray: 0.19 GB) and holds at most 50 MB (RGB) after.
  ``original_width``/``original_height`` keep the upright stored size, at which labels are
  reported.
* **Decoding what the consumer needs.** With ``needed_side`` (the side a method resizes to;
  the runtime passes the method's input side unless ``draft_decode = false`` or the method
  runs a parity mode) the image is reduced by the largest integer factor that keeps both sides
  at or above it: a JPEG by the largest DCT scale (1/2, 1/4, 1/8) that does, then a box reduce
  if one still fits, other formats by a box reduce. :attr:`DecodedImage.scale` records the
  factor.
* **Truncation** is always a failure (``truncated``): Pillow's ``LOAD_TRUNCATED_IMAGES`` is never
  enabled, so a half-downloaded JPEG is never returned gray-filled. libjpeg pads a scan that
  ends early (at a marker) with grey without failing, so a Huffman-coded JPEG whose image data
  are shorter than one bit per 8x8 block of its frame (the least such a JPEG can spend, e.g. a
  header declaring 9000x9000 over 64x64 of data) is ``truncated`` before any pixel is decoded;
  arithmetic-coded JPEGs have no such bound and are left to the decoder. A PNG or GIF missing
  only its trailer (``IEND`` / ``;``) after complete pixel data decodes normally.
* ``MemoryError`` is not converted: with the limits above it means the worker is short of
  memory, a property of the machine rather than of the image.
"""

from __future__ import annotations

import io
import logging
import math
import os
import warnings
from dataclasses import dataclass
from typing import Final

import numpy as np
from PIL import Image, UnidentifiedImageError, features

from labeler.errors import UserError
from labeler.io import jpeg

__all__ = [
    "DECODE_FAILURE_REASONS",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MIN_SIDE",
    "IMAGE_EXTENSIONS",
    "DecodedImage",
    "ImageDecodeError",
    "apply_orientation",
    "decode_image",
    "exif_orientation",
    "has_image_extension",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS: Final[int] = 89_478_485
"""Default pixel limit (width * height), equal to Pillow's ``MAX_IMAGE_PIXELS`` default."""

DEFAULT_MAX_DECODED_PIXELS: Final[int] = 4096 * 4096
"""Default per-image memory bound: images with more pixels are downscaled while decoding to at
most this many (16.8 Mpx, 50 MB as RGB). Methods see 512 px and label at <= 1024 px per side."""

DEFAULT_MIN_SIDE: Final[int] = 8
"""Default minimum length of the shorter side, in pixels (see module docstring)."""

IMAGE_EXTENSIONS: Final[frozenset[str]] = frozenset(
    {"jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff"}
)
"""Lower-case file extensions (without the dot) that folder inputs are searched for."""

DECODE_FAILURE_REASONS: Final[frozenset[str]] = frozenset(
    {
        "empty_file",  # zero bytes
        "not_an_image",  # the bytes are not any image format Pillow recognises
        "unsupported_format",  # an image format, but not one labeler decodes (PSD, EPS, ICO, ...)
        "truncated",  # the file ends before the pixel data does
        "too_many_pixels",  # width * height above max_pixels (from the header, before decoding)
        "too_small",  # shorter side below min_side
        "unsupported_mode",  # a pixel mode that cannot be converted to RGB
        "decode_error",  # anything else: corrupt data, broken header, decoder failure
    }
)
"""Every value :attr:`ImageDecodeError.reason` can take."""

# Formats decoded; sniffed from content. Multi-picture JPEGs (MPO, written by many cameras and
# phones) are opened by the JPEG plugin. Filtered against the plugins this Pillow build has.
Image.init()
_ALLOWED_FORMATS: Final[tuple[str, ...]] = tuple(
    fmt
    for fmt in ("JPEG", "MPO", "PNG", "GIF", "WEBP", "BMP", "DIB", "TIFF", "AVIF")
    if fmt in Image.OPEN and (fmt != "AVIF" or features.check("avif"))
)

_EXIF_ORIENTATION_TAG: Final[int] = 0x0112

# Leading bytes of formats we decode, used to tell "a broken JPEG" from "not an image".
_MAGIC: Final[tuple[tuple[bytes, str], ...]] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),
    (b"MM\x00+", "TIFF"),
)

_BMP_HEADER_SIZES: Final[frozenset[int]] = frozenset({12, 16, 40, 52, 56, 64, 108, 124})
_TRANSPARENT_MODES: Final[frozenset[str]] = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_REDUCIBLE_MODES: Final[frozenset[str]] = frozenset(
    {"L", "LA", "La", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "I", "F"}
)
_DETAIL_MAX_CHARS: Final[int] = 300
#: Pixels per strip when wide (16/32-bit) images are reduced and converted piecewise.
_STRIP_PIXELS: Final[int] = 1 << 20
#: round(v / 257) for every 16-bit value v: 0..65535 onto 0..255.
_UINT16_TO_UINT8: Final[np.ndarray] = ((np.arange(65536) + 128) // 257).astype(np.uint8)
_HEADER_PAD: Final[bytes] = bytes(64 * 1024)


class ImageDecodeError(UserError):
    """An image could not be decoded; a per-image, permanent failure.

    Attributes:
        reason: a stable machine code, one of :data:`DECODE_FAILURE_REASONS`.
        detail: a human-readable explanation (never contains paths or credentials: the decoder
            only ever sees bytes).

    Instances pickle and unpickle (Ray ships them between processes).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in DECODE_FAILURE_REASONS:
            raise ValueError(f"unknown decode failure reason {reason!r}")
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}" if self.detail else self.reason


@dataclass(frozen=True, eq=False)
class DecodedImage:
    """A decoded, upright RGB image.

    Attributes:
        pixels: ``(height, width, 3)`` ``uint8`` RGB array, C-contiguous, EXIF orientation applied.
        width: width of the upright image in pixels (``pixels.shape[1]``).
        height: height of the upright image in pixels (``pixels.shape[0]``).
        format: the container format Pillow detected (``"JPEG"``, ``"PNG"``, ...).
        orientation: the EXIF orientation (1-8) that was applied; 1 when none.
        original_width, original_height: the upright size of the stored image. The same as
            ``width``/``height`` unless the image was downscaled while decoding (above
            ``max_decoded_pixels``, or to ``needed_side``); labels are reported at this size.
        scale: the integer factor the stored image was reduced by while decoding (1: full
            size; a JPEG's DCT scale times any box reduce after it): each side is
            ``ceil(stored side / scale)``.
    """

    pixels: np.ndarray
    width: int
    height: int
    format: str = ""
    orientation: int = 1
    original_width: int = 0
    original_height: int = 0
    scale: int = 1

    def __post_init__(self) -> None:
        if not self.original_width:
            object.__setattr__(self, "original_width", self.width)
        if not self.original_height:
            object.__setattr__(self, "original_height", self.height)

    @property
    def downscaled(self) -> bool:
        """Whether the pixels are smaller than the stored image."""
        return (self.width, self.height) != (self.original_width, self.original_height)


def has_image_extension(name: str) -> bool:
    """Tell whether a file name or URI ends with one of :data:`IMAGE_EXTENSIONS`.

    The comparison ignores case (``IMG_0001.JPG`` matches) and looks only at the last path
    component, so ``dir.jpg/readme`` does not match.
    """
    base = name.rstrip("/").rsplit("/", 1)[-1]
    _, ext = os.path.splitext(base)
    return ext[1:].lower() in IMAGE_EXTENSIONS if ext else False


def _detail(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= _DETAIL_MAX_CHARS else text[: _DETAIL_MAX_CHARS - 3] + "..."


def _sniff(data: bytes) -> str | None:
    for magic, fmt in _MAGIC:
        if data.startswith(magic):
            return fmt
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if len(data) >= 12 and data[4:8] == b"ftyp" and data[8:12] in (b"avif", b"avis"):
        return "AVIF"
    # "BM" alone is too weak (text starting with "BM..."): also require a known DIB header size.
    if (
        len(data) >= 18
        and data[:2] == b"BM"
        and int.from_bytes(data[14:18], "little") in _BMP_HEADER_SIZES
    ):
        return "BMP"
    return None


def _riff_truncated(data: bytes) -> bool:
    """A RIFF (WebP) file whose declared size is larger than the bytes present."""
    if len(data) < 12 or data[:4] != b"RIFF":
        return False
    declared = int.from_bytes(data[4:8], "little") + 8
    return declared > len(data)


def _unsupported_format(data: bytes) -> str | None:
    """Name of a format Pillow recognises but labeler does not decode, else None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                return str(im.format)
    except Image.DecompressionBombError as exc:  # e.g. an ICO holding a huge PNG, renamed .png
        raise ImageDecodeError("too_many_pixels", _detail(exc)) from None
    except Exception:  # noqa: BLE001 - identification only; any failure means "unknown"
        return None


def _parses_when_padded(data: bytes) -> bool:
    """Whether the header parses once zero bytes are appended: the file was cut inside it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data + _HEADER_PAD), formats=_ALLOWED_FORMATS):
                return True
    except Exception:  # noqa: BLE001 - any failure means the header itself is broken
        return False


def _open(data: bytes) -> Image.Image:
    """Parse the header (no pixel decoding) or raise :class:`ImageDecodeError`."""
    try:
        return Image.open(io.BytesIO(data), formats=_ALLOWED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError("too_many_pixels", _detail(exc)) from None
    except UnidentifiedImageError:
        sniffed = _sniff(data)
        if sniffed is not None:
            if sniffed == "WEBP" and _riff_truncated(data):
                raise ImageDecodeError(
                    "truncated", "WebP file is shorter than its RIFF header declares"
                ) from None
            if _parses_when_padded(data):
                raise ImageDecodeError(
                    "truncated", f"{sniffed} file ends inside its header"
                ) from None
            raise ImageDecodeError(
                "decode_error", f"{sniffed} signature found but the header cannot be parsed"
            ) from None
        other = _unsupported_format(data)
        if other is not None:
            raise ImageDecodeError(
                "unsupported_format", f"{other} images are not decoded by labeler"
            ) from None
        raise ImageDecodeError("not_an_image", "bytes are not a recognised image format") from None
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - untrusted input: every parser failure is per-image
        if _sniff(data) is None:  # a plugin accepted a weak prefix (e.g. "BM") and then choked
            raise ImageDecodeError("not_an_image", f"no image signature ({_detail(exc)})") from None
        if _riff_truncated(data):
            raise ImageDecodeError("truncated", _detail(exc)) from None
        if _is_truncation(exc):
            raise ImageDecodeError("truncated", _detail(exc)) from None
        raise ImageDecodeError("decode_error", _detail(exc)) from None


def _is_truncation(exc: BaseException) -> bool:
    if isinstance(exc, EOFError):
        return True
    text = str(exc).lower()
    return isinstance(exc, OSError) and ("truncated" in text or "broken data stream" in text)


def _load(im: Image.Image, data: bytes) -> None:
    """Decode the first frame's pixels, mapping failures to reason codes."""
    try:
        im.load()
    except MemoryError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError("too_many_pixels", _detail(exc)) from None
    except Exception as exc:  # noqa: BLE001 - untrusted input
        if _is_truncation(exc) or _riff_truncated(data):
            raise ImageDecodeError("truncated", _detail(exc)) from None
        raise ImageDecodeError("decode_error", _detail(exc)) from None


def exif_orientation(im: Image.Image) -> int:
    """The EXIF orientation (1-8) of an opened image; 1 when missing, malformed or out of range."""
    try:
        value = im.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    except Exception as exc:  # noqa: BLE001 - malformed EXIF must not fail a good image
        logger.debug("ignoring unreadable EXIF: %s", _detail(exc))
        return 1
    if isinstance(value, (tuple, list)) and value:
        value = value[0]
    try:
        value = int(value)
    except (TypeError, ValueError):
        return 1
    return value if 1 <= value <= 8 else 1


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    out = np.empty(gray.shape + (3,), dtype=np.uint8)
    out[...] = gray[..., None]
    return out


def _is_wide(mode: str) -> bool:
    """16-bit (``I;16*``), 32-bit integer (``I``) and 32-bit float (``F``) modes."""
    return mode.startswith("I") or mode == "F"


def _strip_rows(width: int, factor: int = 1) -> int:
    """Rows per strip of a wide image: about :data:`_STRIP_PIXELS`, a multiple of ``factor``."""
    return max(1, _STRIP_PIXELS // max(1, width * factor)) * factor


def _box_mean(strip: np.ndarray, factor: int) -> np.ndarray:
    """The (ceil(h / factor), ceil(w / factor)) float64 means of ``factor`` x ``factor`` boxes of
    an (h, w) array (the last row and column of boxes may be narrower, as Pillow's ``reduce``)."""
    rows = np.arange(0, strip.shape[0], factor)
    cols = np.arange(0, strip.shape[1], factor)
    sums = np.add.reduceat(np.add.reduceat(strip.astype(np.float64), rows, axis=0), cols, axis=1)
    counts = np.outer(np.diff(rows, append=strip.shape[0]), np.diff(cols, append=strip.shape[1]))
    return sums / counts


def _wide_array(im: Image.Image, factor: int) -> np.ndarray:
    """The pixels of an ``I;16*``, ``I`` or ``F`` image, box-reduced by ``factor``.

    Read in strips of about :data:`_STRIP_PIXELS` (Pillow's ``reduce`` does not take 16-bit
    modes, and a whole-image array would copy Pillow's buffer), so the working memory beside
    Pillow's buffer is the result plus one strip.

    Returns:
        (ceil(H / factor), ceil(W / factor)) ``uint16`` (``I;16*``), ``int32`` (``I``, means
        rounded) or ``float32`` (``F``).
    """
    width, height = im.size
    dtype = np.float32 if im.mode == "F" else np.uint16 if im.mode.startswith("I;16") else np.int32
    out = np.empty((math.ceil(height / factor), math.ceil(width / factor)), dtype)
    rows = _strip_rows(width, factor)
    for top in range(0, height, rows):
        strip = np.asarray(im.crop((0, top, width, min(height, top + rows))))
        if strip.ndim != 2:
            raise ImageDecodeError("unsupported_mode", f"mode {im.mode} with shape {strip.shape}")
        if factor > 1:
            strip = _box_mean(strip, factor)
            if dtype is not np.float32:
                strip = np.rint(strip)
        out[top // factor: top // factor + strip.shape[0]] = strip
    return out


def _finite_range(arr: np.ndarray) -> tuple[float, float, bool] | None:
    """(min, max) of the finite values of a float array and whether it holds NaN, strip by
    strip; None when nothing is finite."""
    lo, hi, has_nan = math.inf, -math.inf, False
    rows = _strip_rows(arr.shape[1])
    for top in range(0, arr.shape[0], rows):
        strip = arr[top: top + rows]
        finite = strip[np.isfinite(strip)]
        has_nan = has_nan or bool(np.isnan(strip).any())
        if finite.size:
            lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
    return None if lo > hi else (lo, hi, has_nan)


def _wide_to_gray8(arr: np.ndarray) -> np.ndarray:
    """Convert the 2-D array of an ``I;16*``, ``I`` or ``F`` image (:func:`_wide_array`) to
    8-bit gray (see module docstring), strip by strip: the only full-size allocation is the
    (H, W) ``uint8`` result."""
    out = np.empty(arr.shape, np.uint8)
    rows = _strip_rows(arr.shape[1])
    strips = [slice(top, top + rows) for top in range(0, arr.shape[0], rows)]
    if arr.dtype == np.uint16:
        for part in strips:
            out[part] = _UINT16_TO_UINT8[arr[part]]
        return out
    if arr.dtype.kind == "f":
        found = _finite_range(arr)
        if found is None:
            out[...] = 0
            return out
        lo, hi, has_nan = found
        if has_nan:  # NaN becomes 0, so 0 is part of the range
            lo, hi = min(lo, 0.0), max(hi, 0.0)
    else:
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if arr.dtype.kind in "iu" and lo >= 0 and hi <= 65535:
        table = np.arange(256, dtype=np.uint8) if hi <= 255 else _UINT16_TO_UINT8
        for part in strips:
            out[part] = table[arr[part]]
        return out
    if arr.dtype.kind == "f" and lo >= 0.0 and hi <= 255.0:
        gain = 255.0 if hi <= 1.0 else 1.0
        offset = 0.0
    elif hi > lo:  # anything else: min-max normalised
        gain, offset = 255.0 / (hi - lo), lo
    else:
        out[...] = 0
        return out
    for part in strips:
        values = arr[part].astype(np.float64)
        if arr.dtype.kind == "f":
            np.nan_to_num(values, copy=False, nan=0.0, posinf=hi, neginf=lo)
        out[part] = np.rint((values - offset) * gain)
    return out


def _cmyk_to_rgb(im: Image.Image) -> Image.Image:
    icc = im.info.get("icc_profile")
    if icc:
        try:
            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            dst = ImageCms.createProfile("sRGB")
            converted = ImageCms.profileToProfile(im, src, dst, outputMode="RGB")
            if converted is not None:
                return converted
        except Exception as exc:  # noqa: BLE001 - fall back to the naive conversion
            logger.debug("CMYK ICC conversion failed, using naive conversion: %s", _detail(exc))
    return im.convert("RGB")


def _composite_on_white(im: Image.Image) -> Image.Image:
    rgba = im if im.mode == "RGBA" else im.convert("RGBA")
    alpha_min, _ = rgba.getchannel("A").getextrema()
    if alpha_min == 255:  # fully opaque: nothing to composite
        return rgba.convert("RGB")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _to_rgb_array(im: Image.Image) -> np.ndarray:
    """Convert a loaded image of any supported mode to an (H, W, 3) uint8 array."""
    mode = im.mode
    if _is_wide(mode):
        return _gray_to_rgb(_wide_to_gray8(_wide_array(im, 1)))
    try:
        if mode in _TRANSPARENT_MODES or (
            mode in {"P", "L", "RGB", "1"} and "transparency" in im.info
        ):
            rgb = _composite_on_white(im)
        elif mode == "RGB":
            rgb = im
        elif mode == "CMYK":
            rgb = _cmyk_to_rgb(im)
        else:  # 1, L, P, RGBX, YCbCr, LAB, HSV, ...
            rgb = im.convert("RGB")
    except ImageDecodeError:
        raise
    except (ValueError, NotImplementedError, KeyError) as exc:
        raise ImageDecodeError("unsupported_mode", f"mode {mode}: {_detail(exc)}") from None
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ImageDecodeError("unsupported_mode", f"mode {mode} gave array {arr.dtype}{arr.shape}")
    return arr


def _reduction_factor(width: int, height: int, max_decoded_pixels: int | None) -> int:
    """The smallest integer factor f with (width / f) * (height / f) <= max_decoded_pixels
    (1 when there is no bound)."""
    if max_decoded_pixels is None or width * height <= max_decoded_pixels:
        return 1
    factor = max(1, math.isqrt(max(0, width * height - 1) // max_decoded_pixels))
    while math.ceil(width / factor) * math.ceil(height / factor) > max_decoded_pixels:
        factor += 1
    return factor


def side_factor(width: int, height: int, needed_side: int | None) -> int:
    """The largest integer factor f whose reduction keeps both sides >= ``needed_side``:
    ``ceil(width / f) >= needed_side`` and ``ceil(height / f) >= needed_side`` (1 when None or
    when the shorter side is already at most ``needed_side``)."""
    shorter = min(width, height)
    if needed_side is None or shorter <= needed_side:
        return 1
    if needed_side == 1:
        return shorter
    return max(1, (shorter - 1) // (needed_side - 1))


def _factor(width: int, height: int, max_decoded_pixels: int | None,
            needed_side: int | None) -> int:
    """The reduction for an image of this size: what ``needed_side`` allows, or more when the
    memory bound asks for more (the bound wins)."""
    return max(_reduction_factor(width, height, max_decoded_pixels),
               side_factor(width, height, needed_side))


def _draft(im: Image.Image, factor: int) -> int:
    """Let a JPEG decode at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling): the largest of them
    at most ``factor``. Returns the scale the decoder was set to (1 for other formats)."""
    width, height = im.size
    scale = next((s for s in (8, 4, 2) if s <= factor), 1)
    if im.format not in ("JPEG", "MPO") or scale == 1:
        return 1
    # Pillow picks the largest power of two <= min(W // w, H // h): exactly ``scale`` here.
    im.draft(im.mode, (width // scale, height // scale))
    return scale if im.size == (math.ceil(width / scale), math.ceil(height / scale)) else 1


def _reducible(im: Image.Image) -> Image.Image:
    """``im`` in a mode Pillow's ``reduce`` averages meaningfully: palette and bilevel images
    are converted first (averaging palette indices is meaningless)."""
    if im.mode == "P":
        return im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode == "PA":
        return im.convert("RGBA")
    if im.mode == "1":
        return im.convert("L")
    return im


def _reduce_image(im: Image.Image, factor: int) -> Image.Image:
    """A loaded image box-downscaled by an integer ``factor`` (Pillow's ``reduce``).

    Reduced strip by strip (strips of about :data:`_STRIP_PIXELS`, a multiple of ``factor``
    rows), so no full-size copy is made: Pillow's ``reduce`` premultiplies alpha into a copy, and
    a palette image is converted to 4 bytes per pixel first. Wide modes are reduced by
    :func:`_wide_array`; modes :meth:`PIL.Image.Image.reduce` does not handle are left to
    :func:`_reduce_array` after conversion.
    """
    if factor == 1 or _is_wide(im.mode) or _reducible(im.crop((0, 0, 1, 1))).mode not in _REDUCIBLE_MODES:
        return im
    width, height = im.size
    rows = _strip_rows(width, factor)
    out = None
    for top in range(0, height, rows):
        piece = _reducible(im.crop((0, top, width, min(height, top + rows)))).reduce(factor)
        if out is None:
            out = Image.new(piece.mode, (math.ceil(width / factor), math.ceil(height / factor)))
        out.paste(piece, (0, top // factor))
    return out


def _reduce_array(pixels: np.ndarray, factor: int) -> np.ndarray:
    """An (H, W, 3) uint8 array box-downscaled by an integer ``factor`` (Pillow's ``reduce``, the
    same pixels as :func:`_reduce_image` gives), strip by strip: no full-size copy is made."""
    if factor == 1:
        return pixels
    height, width = pixels.shape[:2]
    out = np.empty((math.ceil(height / factor), math.ceil(width / factor), 3), np.uint8)
    rows = _strip_rows(width, factor)
    for top in range(0, height, rows):
        piece = np.asarray(Image.fromarray(pixels[top: top + rows]).reduce(factor))
        out[top // factor: top // factor + piece.shape[0]] = piece
    return out


def _rgb_pixels(im: Image.Image, factor: int) -> np.ndarray:
    """The (ceil(H / factor), ceil(W / factor), 3) uint8 RGB pixels of a loaded image in its
    stored frame."""
    if _is_wide(im.mode):
        return _gray_to_rgb(_wide_to_gray8(_wide_array(im, factor)))
    pixels = _to_rgb_array(_reduce_image(im, factor))
    width, height = im.size
    if pixels.shape[:2] == (math.ceil(height / factor), math.ceil(width / factor)):
        return pixels
    return _reduce_array(pixels, factor)  # a mode _reduce_image left as it was


def _turbo_pixels(im: Image.Image, data: bytes, frame: jpeg.Frame | None, scale: int,
                  factor: int) -> np.ndarray | None:
    """The (H, W, 3) uint8 RGB pixels of a JPEG decoded by libjpeg-turbo (:func:`jpeg.decode_rgb`)
    at the DCT ``scale`` Pillow's draft was set to, box-reduced by ``factor``: the pixels
    :func:`_pillow_pixels` gives. None where :mod:`labeler.io.jpeg` does not decode the file
    (or Pillow sees other than gray or RGB): decode it with Pillow."""
    if frame is None or im.mode not in ("L", "RGB") or im.size != (
            math.ceil(frame.width / scale), math.ceil(frame.height / scale)):
        return None
    pixels = jpeg.decode_rgb(data, frame, scale)
    return None if pixels is None else _reduce_array(pixels, factor)


def _pillow_pixels(im: Image.Image, data: bytes, factor: int) -> np.ndarray:
    """The (H, W, 3) uint8 RGB pixels of an opened image, decoded by Pillow and box-reduced by
    ``factor``; decoding failures as :class:`ImageDecodeError`."""
    _load(im, data)
    try:
        return _rgb_pixels(im, factor)
    except (ImageDecodeError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. lazy decoders failing on conversion
        if _is_truncation(exc):
            raise ImageDecodeError("truncated", _detail(exc)) from None
        raise ImageDecodeError("decode_error", _detail(exc)) from None


def apply_orientation(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation to an (H, W) or (H, W, C) array (as Pillow's ``exif_transpose``).

    Used for the pixels of an image and, with the image's orientation, for anything drawn in
    the same stored frame. Returns a C-contiguous array.
    """
    if orientation == 2:
        arr = arr[:, ::-1]
    elif orientation == 3:
        arr = arr[::-1, ::-1]
    elif orientation == 4:
        arr = arr[::-1]
    elif orientation == 5:  # transpose (swap axes)
        arr = np.swapaxes(arr, 0, 1)
    elif orientation == 6:  # rotate 90 degrees clockwise
        arr = np.rot90(arr, k=-1)
    elif orientation == 7:  # transverse (swap axes across the anti-diagonal)
        arr = np.swapaxes(arr, 0, 1)[::-1, ::-1]
    elif orientation == 8:  # rotate 90 degrees counter-clockwise
        arr = np.rot90(arr, k=1)
    return np.ascontiguousarray(arr)


def pil_to_rgb(im: Image.Image) -> np.ndarray:
    """An already opened Pillow image as an upright (H, W, 3) ``uint8`` RGB array.

    The same rules as :func:`decode_image` (EXIF orientation, alpha on white, 16-bit scaling),
    for images that are in memory rather than bytes.

    Raises:
        ImageDecodeError: the image's mode cannot be converted (``unsupported_mode``).
    """
    return apply_orientation(_to_rgb_array(im), exif_orientation(im))


def decode_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
    max_decoded_pixels: int | None = None,
    needed_side: int | None = None,
) -> DecodedImage:
    """Decode image bytes into an upright RGB ``uint8`` array.

    Args:
        data: the encoded file content (JPEG, PNG, GIF, WebP, BMP, TIFF, AVIF; sniffed).
        max_pixels: refuse images whose header declares more than this many pixels
            (``width * height``) with reason ``too_many_pixels``, before decoding any pixel.
        min_side: refuse images whose shorter side is below this many pixels (``too_small``).
        max_decoded_pixels: the per-image memory bound: a larger image is downscaled while
            decoding (JPEG: a DCT scale of 1/2-1/8; others: an integer box reduce
            right after the pixel data is read) to at most this many pixels. None: no bound
            (every pixel is kept). ``original_width``/``original_height`` keep the stored size.
        needed_side: decode only what a consumer that resizes to this side needs: the image is
            reduced (the same two ways) by the largest integer factor that keeps both sides
            >= ``needed_side`` (JPEG: the largest DCT scale that does, then a box reduce if
            one still fits). None: full size (unless the memory bound asks for less).

    Returns:
        The decoded image; see :class:`DecodedImage` and the module docstring for the policies
        (orientation, alpha on white, 16-bit scaling, first frame only).

    Raises:
        ImageDecodeError: the bytes cannot be turned into an image; ``reason`` is one of
            :data:`DECODE_FAILURE_REASONS`.
        ValueError: ``max_pixels``, ``min_side``, ``max_decoded_pixels`` or ``needed_side`` is
            not positive.
    """
    if max_pixels < 1 or min_side < 1 or any(
            value is not None and value < 1 for value in (max_decoded_pixels, needed_side)):
        raise ValueError("max_pixels, min_side, max_decoded_pixels and needed_side must be >= 1")
    if not data:
        raise ImageDecodeError("empty_file", "zero bytes")
    data = bytes(data)

    im = _open(data)
    try:
        fmt = str(im.format or "")
        width, height = im.size
        if width * height > max_pixels:
            raise ImageDecodeError(
                "too_many_pixels",
                f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}",
            )
        if min(width, height) < min_side:
            raise ImageDecodeError(
                "too_small", f"{width}x{height}: shorter side is below {min_side} pixels"
            )
        frame = jpeg.read_frame(data) if fmt in ("JPEG", "MPO") else None
        short = jpeg.data_short(data, frame) if frame is not None else None
        if short:
            raise ImageDecodeError("truncated", short)
        scale = _draft(im, _factor(width, height, max_decoded_pixels, needed_side))
        factor = _factor(*im.size, max_decoded_pixels, needed_side)
        pixels = _turbo_pixels(im, data, frame, scale, factor)
        if pixels is None:
            pixels = _pillow_pixels(im, data, factor)
        orientation = exif_orientation(im)
    finally:
        im.close()

    pixels = apply_orientation(pixels, orientation)
    out_h, out_w = pixels.shape[:2]
    if orientation >= 5:  # a quarter turn: the upright image is the stored one transposed
        width, height = height, width
    return DecodedImage(
        pixels=pixels, width=int(out_w), height=int(out_h), format=fmt, orientation=orientation,
        original_width=int(width), original_height=int(height), scale=scale * factor,
    )
