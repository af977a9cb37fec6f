"""JPEGs decoded by libjpeg-turbo (labeler/io/jpeg.py) give the pixels Pillow's decoder gives, at
every DCT scale, after the box reduce and the EXIF orientation; everything else falls back to
Pillow and decodes (or fails) as before."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
import simplejpeg
from PIL import Image

from labeler.io import jpeg
from labeler.io.decode import ImageDecodeError, decode_image


def _jpeg(pixels: np.ndarray, **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", **options)
    return buffer.getvalue()


def _cv2_jpeg(pixels: np.ndarray, sampling: int, restart: int = 0, progressive: int = 0) -> bytes:
    ok, buffer = cv2.imencode(".jpg", np.ascontiguousarray(pixels[..., ::-1]), [
        cv2.IMWRITE_JPEG_QUALITY, 90, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, sampling,
        cv2.IMWRITE_JPEG_RST_INTERVAL, restart, cv2.IMWRITE_JPEG_PROGRESSIVE, progressive])
    assert ok
    return buffer.tobytes()


def _photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Gradients with noise: every DCT coefficient and every chroma sample matters."""
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // (width - 1), y * 255 // (height - 1), (x + y) * 3 % 256], -1)
    noise = np.random.default_rng(seed).integers(-40, 41, base.shape)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _pillow(data: bytes, **kwargs: object):
    """decode_image with the libjpeg-turbo path switched off: today's Pillow decode, the
    reference (a decoded image, or the failure's reason)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(jpeg, "decode_rgb", lambda *args: None)
        return _outcome(data, **kwargs)


def _outcome(data: bytes, **kwargs: object):
    try:
        return decode_image(data, **kwargs)
    except ImageDecodeError as exc:
        return exc.reason


def _turbo(data: bytes, **kwargs: object):
    """decode_image as it runs, and what each libjpeg-turbo attempt gave (True: decoded)."""
    attempts: list[bool] = []
    real = jpeg.decode_rgb

    def spy(*args):
        pixels = real(*args)
        attempts.append(pixels is not None)
        return pixels

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(jpeg, "decode_rgb", spy)
        return _outcome(data, **kwargs), attempts


def _same(got, want) -> None:
    if isinstance(want, str):
        assert got == want
        return
    assert (got.width, got.height, got.original_width, got.original_height, got.scale,
            got.orientation, got.format) == (want.width, want.height, want.original_width,
                                             want.original_height, want.scale, want.orientation,
                                             want.format)
    assert got.pixels.dtype == np.uint8 and got.pixels.flags.c_contiguous
    assert np.array_equal(got.pixels, want.pixels)


PHOTO = _photo(517, 389)
GRAY = PHOTO[..., 1].copy()
CORPUS = {
    "baseline 4:2:0": _jpeg(PHOTO, quality=92),
    "baseline 4:4:4": _jpeg(PHOTO, quality=92, subsampling=0),
    "baseline 4:2:2": _jpeg(PHOTO, quality=75, subsampling=1),
    "progressive 4:2:0": _jpeg(PHOTO, quality=92, progressive=True),
    "progressive 4:4:4": _jpeg(PHOTO, quality=95, subsampling=0, progressive=True),
    "optimized": _jpeg(PHOTO, quality=85, optimize=True),
    "restart markers every 3 blocks": _jpeg(PHOTO, quality=90, restart_marker_blocks=3),
    "restart markers every row": _jpeg(PHOTO, quality=90, restart_marker_rows=1),
    "grayscale": _jpeg(GRAY, quality=90),
    "grayscale progressive": _jpeg(GRAY, quality=90, progressive=True),
    "RGB components (Adobe, no transform)": _jpeg(PHOTO, quality=90, keep_rgb=True),
    "4:1:1 with restart markers (libjpeg)": _cv2_jpeg(PHOTO, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_411, 2),
    "4:4:0 progressive (libjpeg)": _cv2_jpeg(PHOTO, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_440, 0, 1),
    "4:4:0 (TurboJPEG)": simplejpeg.encode_jpeg(PHOTO, 88, "RGB", "440"),
    "odd size 4:2:0": _jpeg(_photo(331, 97, 1), quality=90),
    "odd size 4:2:2": _jpeg(_photo(97, 331, 2), quality=90, subsampling=1),
    **{f"bundled {path.name}": path.read_bytes()  # photos from other encoders
       for path in (Path(__file__).parents[1] / "labeler" / "data" / "samples").glob("*.jpg")},
}
# needed_side for a 517x389 image -> (decode_scale, the DCT scale): 1/1, 1/2, 1/4, 1/8, and 1/8
# followed by a box reduce by 2 (the drafted 65x49 still holds 2x the side 20)
SIDES = {None: 1, 150: 2, 90: 4, 40: 8, 20: 16}


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_libjpeg_turbo_gives_pillows_pixels_at_every_scale(name):
    data = CORPUS[name]
    for side, scale in SIDES.items():
        want = _pillow(data, needed_side=side)
        got, attempts = _turbo(data, needed_side=side)
        assert attempts == [True], (name, side)
        _same(got, want)
        if Image.open(io.BytesIO(data)).size == (517, 389):
            assert got.scale == scale


def test_the_memory_bound_reduces_the_same_pixels():
    data = CORPUS["baseline 4:2:0"]
    for bound in (60_000, 10_000, 2_000):  # 1/2; 1/4 then 2x2 boxes; 1/8 then 2x2 boxes
        got, attempts = _turbo(data, max_decoded_pixels=bound)
        assert attempts == [True] and got.width * got.height <= bound
        _same(got, _pillow(data, max_decoded_pixels=bound))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_rotated_jpegs_are_turned_upright_the_same_way(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _jpeg(PHOTO, quality=90, exif=exif.tobytes())
    for side in (None, 150, 20):
        got, attempts = _turbo(data, needed_side=side)
        assert attempts == [True] and got.orientation == orientation
        _same(got, _pillow(data, needed_side=side))


def test_the_first_picture_of_an_mpo():
    buffer = io.BytesIO()
    Image.fromarray(PHOTO).save(buffer, "MPO", save_all=True,
                                append_images=[Image.fromarray(PHOTO[::-1].copy())])
    data = buffer.getvalue()
    got, attempts = _turbo(data, needed_side=150)
    assert attempts == [True] and got.format == "MPO"
    _same(got, _pillow(data, needed_side=150))


def test_cmyk_and_ycck_jpegs_are_left_to_pillow():
    cmyk = Image.fromarray(PHOTO).convert("CMYK")
    buffer = io.BytesIO()
    cmyk.save(buffer, "JPEG", quality=90)  # Adobe, inverted CMYK
    ycck = simplejpeg.encode_jpeg(np.asarray(cmyk), 90, "CMYK", "444")
    for data in (buffer.getvalue(), ycck):
        assert Image.open(io.BytesIO(data)).mode == "CMYK"
        got, attempts = _turbo(data, needed_side=150)
        assert attempts == []  # never tried: Pillow converts CMYK with its ICC profile
        _same(got, _pillow(data, needed_side=150))


def test_a_size_at_which_turbojpeg_would_pick_another_scale_is_left_to_pillow():
    # 3x3 at 1/2 is 2x2; TurboJPEG, asked for >= 2x2, would decode at 3/8 (also 2x2)
    data = _jpeg(_photo(3, 3), quality=95, subsampling=0)
    got, attempts = _turbo(data, needed_side=2, min_side=1)
    assert attempts == [False] and got.scale == 2
    _same(got, _pillow(data, needed_side=2, min_side=1))
    # and the guard is what keeps them equal: TurboJPEG's own choice differs
    frame = jpeg.read_frame(data)
    assert frame is not None
    asked = simplejpeg.decode_jpeg(data, "RGB", min_height=2, min_width=2, min_factor=2)
    assert not np.array_equal(asked, got.pixels)


def test_data_libjpeg_warns_about_is_decoded_by_pillow_as_before():
    data = CORPUS["baseline 4:2:0"]
    scan = jpeg.read_frame(data).scan
    # the end-of-image marker a fifth of the scan early: libjpeg warns and fills the rest;
    # Pillow ignores the warning (and the file passes the one-bit-per-block bound)
    early = data[: scan + (len(data) - scan) * 4 // 5] + b"\xff\xd9"
    got, attempts = _turbo(early)
    assert attempts == [False] and not isinstance(got, str)
    _same(got, _pillow(early))
    for cut in (0.6, 0.8, 0.95, 0.999):  # truncated: a failure, whichever decoder sees it
        truncated = data[: int(len(data) * cut)]
        got, attempts = _turbo(truncated)
        assert got == "truncated" and attempts in ([], [False])
    rng = np.random.default_rng(0)
    for _ in range(6):  # corrupt entropy-coded data: whatever Pillow made of it
        corrupt = bytearray(data)
        at = rng.integers(scan + 20, len(data) - 20, 3)
        corrupt[at[0]: at[0] + 8] = rng.integers(0, 256, 8, dtype=np.uint8).tobytes()
        got, attempts = _turbo(bytes(corrupt))
        _same(got, _pillow(bytes(corrupt)))


def _with_sof(data: bytes, marker: int | None = None, precision: int | None = None) -> bytes:
    out = bytearray(data)
    at = data.index(b"\xff\xc0")
    if marker is not None:
        out[at + 1] = marker
    if precision is not None:
        out[at + 4] = precision
    return bytes(out)


@pytest.mark.parametrize("marker, precision", [(0xC9, None), (0xC3, None), (None, 12)])
def test_arithmetic_lossless_and_12_bit_frames_never_reach_turbojpeg(monkeypatch, marker, precision):
    data = _with_sof(_jpeg(PHOTO[:64, :64], quality=90), marker, precision)
    frame = jpeg.read_frame(data)
    assert frame is not None
    assert (frame.marker, frame.precision) == (marker or 0xC0, precision or 8)
    pillow = _pillow(data)

    def refuse(*args, **kwargs):
        raise AssertionError("simplejpeg called")

    monkeypatch.setattr(simplejpeg, "decode_jpeg", refuse)
    assert jpeg.decode_rgb(data, frame, 1) is None
    _same(_outcome(data), pillow)


def test_read_frame_reads_the_frame_header_and_the_scan():
    data = CORPUS["baseline 4:2:0"]
    frame = jpeg.read_frame(data)
    assert frame is not None
    assert (frame.marker, frame.precision, frame.width, frame.height, frame.components,
            frame.sampling, frame.frames) == (0xC0, 8, 517, 389, 3, ((2, 2), (1, 1), (1, 1)), 1)
    assert data[frame.scan: frame.scan + 2] == b"\xff\xda"
    assert jpeg.read_frame(data[:2] + b"junk" + data[2:]) is None
    assert jpeg.read_frame(data[: frame.scan - 30]) is None


def test_size_limits_and_the_data_bound_are_checked_before_turbojpeg_sees_a_byte(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("simplejpeg called")

    monkeypatch.setattr(simplejpeg, "decode_jpeg", refuse)
    data = CORPUS["baseline 4:2:0"]
    assert _outcome(data, max_pixels=517 * 389 - 1) == "too_many_pixels"
    assert _outcome(data, min_side=390) == "too_small"
    forged = bytearray(_jpeg(PHOTO[:64, :64], quality=90))  # 64x64 of data under a 9000x9000 frame
    at = forged.index(b"\xff\xc0") + 5
    forged[at: at + 4] = (9000).to_bytes(2, "big") * 2
    assert _outcome(bytes(forged)) == "truncated"
