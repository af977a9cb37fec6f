"""decode_image on a generated corpus of good, odd and bad inputs (all built here with PIL/numpy)."""

from __future__ import annotations

import io
import pickle
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from labeler.io.decode import (
    DECODE_FAILURE_REASONS,
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    DecodedImage,
    ImageDecodeError,
    decode_image,
    has_image_extension,
)

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def png_raw(array: np.ndarray, color_type: int, bit_depth: int) -> bytes:
    """A PNG written by hand (Pillow cannot write 16-bit RGB)."""
    height, width = array.shape[:2]
    dtype = ">u2" if bit_depth == 16 else "u1"
    raw = b"".join(b"\x00" + array[y].astype(dtype).tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def noise(height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def smooth(height: int = 48, width: int = 64) -> np.ndarray:
    """A gradient image (JPEG-friendly, so lossy round trips stay close)."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack(
        [x * 255 // max(1, width - 1), y * 255 // max(1, height - 1), np.full_like(x, 90)], axis=-1
    ).astype(np.uint8)


def reason(data: bytes, **kwargs: object) -> str:
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data, **kwargs)
    assert info.value.reason in DECODE_FAILURE_REASONS
    return info.value.reason


def check_output(result: DecodedImage, height: int, width: int) -> np.ndarray:
    pixels = result.pixels
    assert pixels.dtype == np.uint8
    assert pixels.shape == (height, width, 3)
    assert pixels.flags.c_contiguous
    assert (result.height, result.width) == (height, width)
    return pixels


# --------------------------------------------------------------------------------------------
# Good inputs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF", "WEBP"])
def test_lossless_rgb_round_trip(fmt: str) -> None:
    array = noise()
    params = {"lossless": True} if fmt == "WEBP" else {}
    result = decode_image(encode(Image.fromarray(array), fmt, **params))
    np.testing.assert_array_equal(check_output(result, 48, 64), array)
    assert result.format == fmt
    assert result.orientation == 1


def test_jpeg_rgb() -> None:
    array = smooth()
    pixels = check_output(decode_image(encode(Image.fromarray(array), "JPEG", quality=95)), 48, 64)
    assert np.abs(pixels.astype(int) - array).mean() < 3


def test_grayscale_and_one_bit() -> None:
    gray = np.tile(np.arange(64, dtype=np.uint8) * 4, (16, 1))
    pixels = check_output(decode_image(encode(Image.fromarray(gray), "PNG")), 16, 64)
    for channel in range(3):
        np.testing.assert_array_equal(pixels[..., channel], gray)

    bits = np.zeros((16, 16), dtype=bool)
    bits[:, 8:] = True
    pixels = check_output(decode_image(encode(Image.fromarray(bits), "PNG")), 16, 16)
    assert (pixels[:, :8] == 0).all() and (pixels[:, 8:] == 255).all()


def test_la_composited_on_white() -> None:
    array = np.zeros((16, 16, 2), dtype=np.uint8)
    array[..., 0] = 0  # black
    array[:, 8:, 1] = 255  # right half opaque, left half transparent
    pixels = check_output(decode_image(encode(Image.fromarray(array, "LA"), "PNG")), 16, 16)
    assert (pixels[:, :8] == 255).all()
    assert (pixels[:, 8:] == 0).all()


def test_rgba_composited_on_white() -> None:
    array = np.zeros((16, 24, 4), dtype=np.uint8)
    array[..., 0] = 255  # red everywhere
    array[:, :8, 3] = 0  # transparent
    array[:, 8:16, 3] = 128  # half
    array[:, 16:, 3] = 255  # opaque
    pixels = check_output(decode_image(encode(Image.fromarray(array, "RGBA"), "PNG")), 16, 24)
    assert (pixels[:, :8] == WHITE).all()
    assert (pixels[:, 16:] == RED).all()
    half = pixels[0, 12].astype(int)
    assert half[0] == 255 and 120 <= half[1] <= 135 and half[1] == half[2]


def test_fully_opaque_rgba_keeps_colours() -> None:
    array = np.dstack([noise(), np.full((48, 64), 255, dtype=np.uint8)])
    pixels = check_output(decode_image(encode(Image.fromarray(array, "RGBA"), "PNG")), 48, 64)
    np.testing.assert_array_equal(pixels, array[..., :3])


def test_palette_without_and_with_transparency() -> None:
    image = Image.new("P", (16, 16), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    image.paste(1, (8, 0, 16, 16))
    pixels = check_output(decode_image(encode(image, "PNG")), 16, 16)
    assert (pixels[:, :8] == RED).all() and (pixels[:, 8:] == BLUE).all()

    pixels = check_output(decode_image(encode(image, "PNG", transparency=0)), 16, 16)
    assert (pixels[:, :8] == WHITE).all() and (pixels[:, 8:] == BLUE).all()

    pixels = check_output(decode_image(encode(image, "GIF", transparency=1)), 16, 16)
    assert (pixels[:, :8] == RED).all() and (pixels[:, 8:] == WHITE).all()


def test_cmyk_jpeg() -> None:
    array = np.zeros((32, 32, 3), dtype=np.uint8)
    array[:16, :16] = RED
    array[:16, 16:] = GREEN
    array[16:, :16] = BLUE
    array[16:, 16:] = WHITE
    cmyk = Image.fromarray(array).convert("CMYK")
    data = encode(cmyk, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    pixels = check_output(decode_image(data), 32, 32).astype(int)
    for (y, x), colour in {(4, 4): RED, (4, 28): GREEN, (28, 4): BLUE, (28, 28): WHITE}.items():
        assert np.abs(pixels[y, x] - np.array(colour)).max() <= 12, (y, x, pixels[y, x])


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_ycbcr_images(fmt: str) -> None:
    array = smooth(32, 32)
    data = encode(
        Image.fromarray(array).convert("YCbCr"), fmt, **({"quality": 95} if fmt == "JPEG" else {})
    )
    pixels = check_output(decode_image(data), 32, 32)
    assert np.abs(pixels.astype(int) - array).max() <= 8


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16bit_grayscale_is_scaled_not_clipped(fmt: str) -> None:
    values = np.array([0, 257, 32768, 65535, 100 * 257, 65535 // 2], dtype=np.uint16)
    array = np.tile(values, (8, 2))  # 8 x 12
    image = Image.fromarray(array)
    assert image.mode.startswith("I;16")
    data = encode(image, fmt)
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    pixels = check_output(decode_image(data), 8, 12)
    np.testing.assert_array_equal(pixels[0, :6, 0], [0, 1, 128, 255, 100, 127])
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()


def test_16bit_big_endian_tiff() -> None:
    values = np.tile(np.array([0, 32768, 65535, 257 * 42], dtype=np.uint16), (8, 2))
    image = Image.frombytes("I;16B", (8, 8), values.astype(">u2").tobytes())
    data = encode(image, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I;16B"
    pixels = check_output(decode_image(data), 8, 8)
    np.testing.assert_array_equal(pixels[0, :4, 1], [0, 128, 255, 42])


def test_unconvertible_mode_is_unsupported_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    data = encode(Image.new("L", (16, 16), 3), "PNG")

    def refuse(
        self: Image.Image, mode: str | None = None, *args: object, **kwargs: object
    ) -> Image.Image:
        raise ValueError(f"conversion from {self.mode} to {mode} not supported")

    monkeypatch.setattr(Image.Image, "convert", refuse)
    assert reason(data) == "unsupported_mode"


def test_16bit_rgb_and_rgba_png() -> None:
    rgb = np.zeros((8, 8, 3), dtype=np.uint16)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 65535, 32768, 0
    pixels = check_output(decode_image(png_raw(rgb, 2, 16)), 8, 8)
    assert tuple(pixels[0, 0]) == (255, 128, 0)

    rgba = np.zeros((8, 8, 4), dtype=np.uint16)
    rgba[..., 2] = 65535
    rgba[..., 3] = 65535
    rgba[:, :4, 3] = 0
    pixels = check_output(decode_image(png_raw(rgba, 6, 16)), 8, 8)
    assert (pixels[:, :4] == WHITE).all() and (pixels[:, 4:] == BLUE).all()


def test_float32_tiff() -> None:
    unit = np.linspace(0.0, 1.0, 8 * 16, dtype=np.float32).reshape(8, 16)
    image = Image.fromarray(unit)
    assert image.mode == "F"
    pixels = check_output(decode_image(encode(image, "TIFF")), 8, 16)
    np.testing.assert_array_equal(pixels[..., 0], np.rint(unit * 255).astype(np.uint8))

    wide = (unit * 4000.0 - 1000.0).astype(np.float32)  # outside 0..255: min-max normalised
    wide[0, 0] = np.nan
    pixels = check_output(decode_image(encode(Image.fromarray(wide), "TIFF")), 8, 16)
    assert pixels[..., 0].max() == 255 and pixels[-1, -1, 0] == 255
    assert pixels[0, 1, 0] == 0


def test_32bit_integer_image() -> None:
    array = np.tile(np.array([0, 1000, 70000, 140000], dtype=np.int32), (8, 2))
    image = Image.fromarray(array, "I")
    pixels = check_output(decode_image(encode(image, "TIFF")), 8, 8)
    assert pixels[0, 0, 0] == 0 and pixels[0, 3, 0] == 255


# Orientation o stores the upright image transformed by the inverse of the transform the tag
# asks viewers to apply. Transforms 2, 3, 4, 5, 7 are their own inverse; 6 and 8 are each
# other's. Written independently of the implementation.
def stored_for_orientation(upright: np.ndarray, orientation: int) -> np.ndarray:
    return {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.transpose(1, 0, 2),
        6: lambda a: np.rot90(a, 1),  # inverse of a 90-degree clockwise rotation
        7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
        8: lambda a: np.rot90(a, -1),
    }[orientation](upright)


def asymmetric(height: int = 24, width: int = 40) -> np.ndarray:
    """Every quadrant different, no symmetry: red top-left marker, blue bottom strip."""
    array = np.full((height, width, 3), 200, dtype=np.uint8)
    array[:6, :10] = RED
    array[-4:, :] = BLUE
    array[:, -3:] = GREEN
    array[10, 5] = (1, 2, 3)
    return array


def exif_with(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_png(orientation: int) -> None:
    upright = asymmetric()
    stored = np.ascontiguousarray(stored_for_orientation(upright, orientation))
    data = encode(Image.fromarray(stored), "PNG", exif=exif_with(orientation))
    result = decode_image(data)
    np.testing.assert_array_equal(check_output(result, 24, 40), upright)
    assert result.orientation == orientation


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_jpeg(orientation: int) -> None:
    upright = asymmetric(48, 80)
    stored = np.ascontiguousarray(stored_for_orientation(upright, orientation))
    data = encode(Image.fromarray(stored), "JPEG", quality=95, exif=exif_with(orientation))
    pixels = check_output(decode_image(data), 48, 80)
    assert np.abs(pixels.astype(int) - upright).mean() < 4


def test_exif_orientation_tiff_and_webp() -> None:
    upright = asymmetric()
    stored = np.ascontiguousarray(stored_for_orientation(upright, 6))
    tiff = encode(Image.fromarray(stored), "TIFF", tiffinfo={0x0112: 6})
    np.testing.assert_array_equal(decode_image(tiff).pixels, upright)
    webp = encode(Image.fromarray(stored), "WEBP", lossless=True, exif=exif_with(6))
    np.testing.assert_array_equal(decode_image(webp).pixels, upright)


@pytest.mark.parametrize("value", [0, 9, 65535])
def test_invalid_orientation_is_ignored(value: int) -> None:
    upright = asymmetric()
    result = decode_image(encode(Image.fromarray(upright), "PNG", exif=exif_with(value)))
    np.testing.assert_array_equal(result.pixels, upright)
    assert result.orientation == 1


def frames(
    colours: list[tuple[int, int, int]], size: tuple[int, int] = (16, 12)
) -> list[Image.Image]:
    return [Image.new("RGB", size, colour) for colour in colours]


@pytest.mark.parametrize(
    ("fmt", "params"),
    [("GIF", {}), ("WEBP", {"lossless": True}), ("PNG", {})],
    ids=["gif", "webp", "apng"],
)
def test_animated_first_frame(fmt: str, params: dict[str, object]) -> None:
    first, *rest = frames([RED, GREEN, BLUE])
    data = encode(first, fmt, save_all=True, append_images=rest, duration=50, loop=0, **params)
    with Image.open(io.BytesIO(data)) as probe:
        assert getattr(probe, "n_frames", 1) == 3
    pixels = check_output(decode_image(data), 12, 16)
    assert (np.abs(pixels.astype(int) - RED).max(axis=-1) <= 2).all()


def test_multipage_tiff_first_page() -> None:
    first, *rest = frames([GREEN, BLUE])
    data = encode(first, "TIFF", save_all=True, append_images=rest)
    assert (decode_image(data).pixels == GREEN).all()


def test_small_images_policy() -> None:
    one = encode(Image.new("RGB", (1, 1), RED), "PNG")
    assert reason(one) == "too_small"
    assert (decode_image(one, min_side=1).pixels == RED).all()
    eight = encode(Image.new("RGB", (8, 8), RED), "PNG")
    check_output(decode_image(eight), 8, 8)
    assert reason(encode(Image.new("RGB", (500, 7)), "PNG")) == "too_small"


def test_very_wide_and_large_images_within_limit() -> None:
    wide = decode_image(encode(Image.new("RGB", (12000, 8), BLUE), "PNG"))
    assert (check_output(wide, 8, 12000) == BLUE).all()
    big = decode_image(encode(Image.new("L", (4096, 3072), 7), "PNG"))
    pixels = check_output(big, 3072, 4096)
    assert pixels[0, 0, 0] == 7 and pixels[-1, -1, 2] == 7


# --------------------------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------------------------


def test_empty_file() -> None:
    assert reason(b"") == "empty_file"


@pytest.mark.parametrize(
    "data",
    [
        b"hello, this is a text file named cat.jpg\n",
        b"<html><body>404</body></html>",
        b"\x00" * 100,
        b"%PDF-1.4\n",
        b"BMW and other text that starts with BM",
    ],
    ids=["text", "html", "zeros", "pdf-header", "bm-text"],
)
def test_not_an_image(data: bytes) -> None:
    assert reason(data) == "not_an_image"


@pytest.mark.parametrize("fmt", ["ICO", "TGA", "PPM"])
def test_unsupported_formats(fmt: str) -> None:
    assert reason(encode(Image.new("RGB", (16, 16), RED), fmt)) == "unsupported_format"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP"])
@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.9])
def test_truncated_files_fail(fmt: str, fraction: float) -> None:
    image = Image.fromarray(noise(64, 80))
    data = encode(image.convert("P") if fmt == "GIF" else image, fmt)
    cut = data[: int(len(data) * fraction)]
    assert reason(cut) == "truncated"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_truncated_jpeg_never_returns_gray_fill() -> None:
    data = encode(Image.fromarray(smooth(256, 256)), "JPEG")
    for cut in range(200, len(data), max(1, len(data) // 40)):
        with pytest.raises(ImageDecodeError) as info:
            decode_image(data[:cut])
        assert info.value.reason in {"truncated", "decode_error"}


def _with_frame_size(data: bytes, width: int, height: int) -> bytes:
    """A JPEG whose frame header (SOF) declares another size; its data are unchanged."""
    out, pos = bytearray(data), 2
    while out[pos + 1] not in (0xC0, 0xC1, 0xC2):
        pos += 2 + int.from_bytes(out[pos + 2: pos + 4], "big")
    out[pos + 5: pos + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(out)


@pytest.mark.parametrize("progressive", [False, True])
def test_a_jpeg_header_claiming_more_than_its_data_fill_is_truncated(progressive: bool) -> None:
    """The fault: 9000x9000 declared over 64x64 of data decoded "ok" as grey and was labeled."""
    small = encode(Image.fromarray(noise(64, 64)), "JPEG", progressive=progressive)
    assert decode_image(small).width == 64
    with pytest.raises(ImageDecodeError) as info:
        decode_image(_with_frame_size(small, 9000, 9000), max_decoded_pixels=4096 * 4096)
    assert info.value.reason == "truncated"
    assert "9000x9000" in info.value.detail


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
@pytest.mark.parametrize("options", [{}, {"optimize": True}, {"progressive": True, "optimize": True},
                                     {"subsampling": 0}])
def test_jpegs_that_spend_little_on_each_block_still_decode(mode: str, options: dict) -> None:
    """A flat image costs a Huffman-coded JPEG about one bit per block: the bound is not hit."""
    data = encode(Image.new(mode, (1600, 1200), 40), "JPEG", **options)
    assert decode_image(data).pixels.shape == (1200, 1600, 3)


def test_corrupt_png_crc_is_decode_error() -> None:
    data = bytearray(encode(Image.fromarray(noise()), "PNG"))
    data[20] ^= 0xFF  # inside IHDR: its CRC no longer matches
    assert reason(bytes(data)) in {"decode_error", "truncated"}


def test_bomb_over_configured_limit_is_refused_before_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = encode(Image.new("L", (2000, 1000)), "PNG")  # compresses to ~2 KB
    assert len(data) < 20_000
    assert reason(data, max_pixels=1_000_000) == "too_many_pixels"
    assert decode_image(data, max_pixels=2_000_000).width == 2000

    def no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels decoded before the size check")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    assert reason(data, max_pixels=1_000_000) == "too_many_pixels"


def test_header_only_bomb_with_default_limit() -> None:
    # A PNG header announcing 100,000 x 100,000 pixels, followed by almost nothing.
    header = png_raw(np.zeros((1, 1), dtype=np.uint8), 0, 8)
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    data = header[:16] + ihdr + crc + header[33:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert reason(data) == "too_many_pixels"
    # Between PIL's warning threshold and its hard limit: refused by our own check.
    ihdr = struct.pack(">IIBBBBB", 12_000, 10_000, 8, 0, 0, 0, 0)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    data = header[:16] + ihdr + crc + header[33:]
    assert 12_000 * 10_000 > DEFAULT_MAX_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert reason(data) == "too_many_pixels"


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        decode_image(b"x", max_pixels=0)
    with pytest.raises(ValueError):
        decode_image(b"x", min_side=0)


# --------------------------------------------------------------------------------------------
# Error type and helpers
# --------------------------------------------------------------------------------------------


def test_error_pickles_and_formats() -> None:
    error = ImageDecodeError("truncated", "image file is truncated")
    clone = pickle.loads(pickle.dumps(error))
    assert (clone.reason, clone.detail) == ("truncated", "image file is truncated")
    assert str(clone) == "truncated: image file is truncated"
    assert isinstance(clone, ValueError)
    with pytest.raises(ValueError):
        ImageDecodeError("not-a-reason", "")


def test_reason_codes_are_documented() -> None:
    assert DECODE_FAILURE_REASONS == {
        "empty_file",
        "not_an_image",
        "unsupported_format",
        "truncated",
        "too_many_pixels",
        "too_small",
        "unsupported_mode",
        "decode_error",
    }


def test_image_extensions() -> None:
    assert IMAGE_EXTENSIONS == {"jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff"}
    for name in [
        "a.jpg",
        "A.JPG",
        "x/y/Photo.JpEg",
        "s3://b/k/img.TIFF",
        "z.webp",
        "p.bmp",
        "q.tif",
    ]:
        assert has_image_extension(name), name
    for name in ["a.gif", "jpg", "a.jpg.txt", "dir.jpg/readme", "a.", "", "noext"]:
        assert not has_image_extension(name), name
