"""JPEG headers, and the libjpeg-turbo decode of the common JPEGs, for :mod:`labeler.io.decode`.

:func:`read_frame` walks a JPEG's markers up to its first scan and returns its frame header
(:class:`Frame`); :func:`data_short` tells from it whether the image data can fill the frame;
:func:`decode_rgb` decodes the pixels with libjpeg-turbo's TurboJPEG API (through
``simplejpeg``) at a DCT scale of 1, 1/2, 1/4 or 1/8, straight into an ``(H, W, 3)`` ``uint8``
array.

Pillow decodes JPEGs with libjpeg-turbo too, with the same settings (accurate integer IDCT,
fancy upsampling, libjpeg's colour conversion, the same DCT scaling): both give the same pixels
(``tests/test_jpeg_turbo.py`` compares them on baseline, progressive, grayscale, restart-marker
and 4:4:4 to 4:1:1 JPEGs at every scale). TurboJPEG writes the 3-byte pixels into the array
itself, where Pillow holds 4 bytes a pixel and copies them out. :func:`decode_rgb` takes only
what it is sure of and returns None for everything else, and the caller decodes with Pillow:

* frames other than 8-bit Huffman-coded ones (baseline, extended, progressive): arithmetic
  coding, lossless, hierarchical, 12-bit;
* other than 1 (gray) or 3 (YCbCr or RGB) components: CMYK and YCCK (Pillow converts those
  with their ICC profile);
* headers that cannot be walked marker by marker, or with more than one frame header;
* sizes for which TurboJPEG's choice of scale would be ambiguous (it picks the smallest of its
  eighths whose output is at least the size asked for: a 3x3 image at 1/2 would be decoded at
  3/8);
* anything libjpeg warns about (corrupt or truncated data, extraneous bytes: ``strict``
  decoding turns warnings into errors) or fails on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
import simplejpeg

__all__ = ["Frame", "data_short", "decode_rgb", "read_frame"]

#: Huffman-coded frames (baseline, extended sequential, progressive).
HUFFMAN_SOF: Final[frozenset[int]] = frozenset({0xC0, 0xC1, 0xC2})
_SOF_MARKERS: Final[frozenset[int]] = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_SOS: Final[int] = 0xDA
_EOI: Final[bytes] = b"\xff\xd9"
#: The DCT scales both decoders are asked for (1/scale).
DCT_SCALES: Final[tuple[int, ...]] = (1, 2, 4, 8)


@dataclass(frozen=True)
class Frame:
    """A JPEG's frame header (its SOF segment) and where its first scan starts.

    Attributes:
        marker: the SOF marker's second byte (0xC0 baseline, 0xC2 progressive, ...).
        precision: bits per sample (8 or 12).
        width, height: the stored size in pixels.
        components: the number of components the header declares (1 gray, 3 YCbCr or RGB,
            4 CMYK or YCCK).
        sampling: (horizontal, vertical) sampling factors, one pair per component present.
        scan: offset of the first start-of-scan marker in the file.
        frames: how many frame headers precede the first scan (1 in a well-formed file).
    """

    marker: int
    precision: int
    width: int
    height: int
    components: int
    sampling: tuple[tuple[int, int], ...]
    scan: int
    frames: int


def read_frame(data: bytes) -> Frame | None:
    """The frame header of a JPEG's bytes, from its markers up to the first scan; None when the
    markers cannot be walked (junk between segments, the file ends first) or there is no usable
    frame header before the scan."""
    pos, segment, frames = 2, None, 0
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker in (0xFF, 0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # fill byte, no length
            pos += 1 if marker == 0xFF else 2
            continue
        length = int.from_bytes(data[pos + 2: pos + 4], "big")
        if marker in _SOF_MARKERS:
            segment, frames = (marker, data[pos + 4: pos + 2 + length]), frames + 1
        elif marker == _SOS:
            break
        pos += 2 + length
    else:
        return None
    if segment is None or len(segment[1]) < 6:
        return None
    marker, header = segment
    count = header[5]
    return Frame(marker=marker, precision=header[0], height=int.from_bytes(header[1:3], "big"),
                 width=int.from_bytes(header[3:5], "big"), components=count,
                 sampling=tuple((byte >> 4, byte & 15) for byte in header[7: 6 + 3 * count: 3]),
                 scan=pos, frames=frames)


def data_short(data: bytes, frame: Frame) -> str | None:
    """Why a JPEG's image data cannot fill the frame its header declares, else None.

    Every 8x8 block of every component costs a Huffman-coded JPEG at least one bit (the code of
    its DC value, in the sequential scan or the progressive DC scan); libjpeg pads missing data
    with grey instead of failing, so a file cut short (or a small image behind a forged header:
    9000x9000 over 64x64 of data) would decode as grey. The bytes counted run from the first
    scan to the first end-of-image marker. Arithmetic-coded frames (no such bound) are left to
    the decoder.
    """
    sampling, width, height = frame.sampling, frame.width, frame.height
    if frame.marker not in HUFFMAN_SOF or not (height and width and sampling) or not all(
            h and v for h, v in sampling):
        return None
    h_max, v_max = max(h for h, _ in sampling), max(v for _, v in sampling)
    blocks = sum(math.ceil(math.ceil(width * h / h_max) / 8) * math.ceil(math.ceil(height * v / v_max) / 8)
                 for h, v in sampling)
    needed = math.ceil(blocks / 8)
    end = data.find(_EOI, frame.scan, frame.scan + needed + len(_EOI))  # only as far as the bound
    available = (len(data) if end < 0 else end) - frame.scan
    if available >= needed:
        return None
    return (f"{width}x{height} JPEG: {available} bytes of image data, at least {needed} "
            f"needed to fill its frame")


def _unambiguous(width: int, height: int, scale: int) -> bool:
    """Whether TurboJPEG, asked for at least ``ceil(side / scale)`` pixels a side, picks 1/scale:
    it takes the smallest of its scales k/8 (k = 1..8) that gives that much, so the next
    smaller one, (8 / scale - 1) / 8, must give less on one side."""
    k = 8 // scale - 1
    return k == 0 or any(math.ceil(side * k / 8) < math.ceil(side / scale)
                         for side in (width, height))


def decode_rgb(data: bytes, frame: Frame, scale: int) -> np.ndarray | None:
    """The pixels of a JPEG decoded by libjpeg-turbo at DCT scale ``1 / scale``.

    Args:
        data: the whole file.
        frame: its frame header (:func:`read_frame`).
        scale: 1, 2, 4 or 8.

    Returns:
        ``(ceil(height / scale), ceil(width / scale), 3)`` ``uint8`` RGB in the stored frame
        (no EXIF orientation), C-contiguous; None when the file is not one this decodes exactly
        as Pillow does (see the module docstring): decode it with Pillow.
    """
    if (frame.marker not in HUFFMAN_SOF or frame.precision != 8 or frame.frames != 1
            or frame.components not in (1, 3) or len(frame.sampling) != frame.components or scale not in DCT_SCALES
            or not _unambiguous(frame.width, frame.height, scale)):
        return None
    width, height = math.ceil(frame.width / scale), math.ceil(frame.height / scale)
    try:
        pixels = simplejpeg.decode_jpeg(data, "RGB", min_height=height, min_width=width,
                                        min_factor=scale, strict=True)
    except (ValueError, RuntimeError):  # libjpeg's errors and warnings: Pillow decides
        return None
    return pixels if pixels.shape == (height, width, 3) else None
