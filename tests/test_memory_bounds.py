"""The decoder's per-image memory bound: huge images are downscaled while decoding, and their
labels are still reported at the stored size."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

import labeler
from labeler.io.decode import DEFAULT_MAX_DECODED_PIXELS, decode_image
from labeler.io.folders import Folder
from labeler.runtime import shard as shard_module
from labeler.runtime.plan import plan_run
from labeler.runtime.run_folder import RunFolder
from labeler.runtime.shard import ShardProcessor
from tests.helpers import HalvesSegmenter

ROOT = Path(__file__).resolve().parents[1]


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _halves(width: int, height: int) -> Image.Image:
    """Left half red, right half blue."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2] = (220, 20, 20)
    pixels[:, width // 2 :] = (20, 20, 220)
    return Image.fromarray(pixels)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "TIFF"])
def test_a_large_image_is_downscaled_while_decoding_to_the_bound(fmt):
    data = _encoded(_halves(1200, 800), fmt)
    decoded = decode_image(data, max_decoded_pixels=100_000)
    assert decoded.width * decoded.height <= 100_000
    assert decoded.downscaled and (decoded.original_width, decoded.original_height) == (1200, 800)
    assert abs(decoded.width / decoded.height - 1.5) < 0.05
    left, right = decoded.pixels[:, 5].mean(axis=0), decoded.pixels[:, -5].mean(axis=0)
    assert left[0] > 180 and right[2] > 180  # the content survives the reduction


def test_an_image_within_the_bound_is_decoded_as_before():
    data = _encoded(_halves(120, 80), "PNG")
    bounded = decode_image(data, max_decoded_pixels=120 * 80)
    plain = decode_image(data)
    assert not bounded.downscaled
    assert np.array_equal(bounded.pixels, plain.pixels)


def test_palette_16_bit_and_rotated_images_are_reduced_in_their_upright_frame():
    palette = Image.new("P", (900, 600), 1)
    palette.putpalette([0, 0, 0, 250, 20, 20] + [0, 0, 0] * 254)
    decoded = decode_image(_encoded(palette, "PNG"), max_decoded_pixels=60_000)
    assert decoded.width * decoded.height <= 60_000 and tuple(decoded.pixels[0, 0]) == (250, 20, 20)

    gray16 = Image.fromarray(np.full((600, 900), 65535, np.uint16))
    decoded = decode_image(_encoded(gray16, "PNG"), max_decoded_pixels=60_000)
    assert decoded.width * decoded.height <= 60_000 and tuple(decoded.pixels[0, 0]) == (255,) * 3

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise
    rotated = decode_image(_encoded(_halves(900, 600), "JPEG", exif=exif.tobytes()),
                           max_decoded_pixels=60_000)
    assert (rotated.original_width, rotated.original_height) == (600, 900)
    assert rotated.height > rotated.width


def test_an_ico_decompression_bomb_named_png_is_too_many_pixels():
    header = bytearray(_encoded(Image.new("1", (8, 8)), "PNG"))
    header[16:24] = (30000).to_bytes(4, "big") * 2  # the IHDR now declares 30000 x 30000
    header[29:33] = zlib.crc32(bytes(header[12:29])).to_bytes(4, "big")
    directory = (0).to_bytes(2, "little") + (1).to_bytes(2, "little") + (1).to_bytes(2, "little")
    entry = bytes([0, 0, 0, 0]) + (1).to_bytes(2, "little") + (32).to_bytes(2, "little")
    entry += len(header).to_bytes(4, "little") + (22).to_bytes(4, "little")
    with pytest.raises(Exception) as raised:
        decode_image(directory + entry + bytes(header))
    assert getattr(raised.value, "reason", None) == "too_many_pixels"


def _flat_png(side: int, bit_depth: int, color_type: int, channels: int) -> bytes:
    """A side x side PNG of zeros, compressed row by row: a few hundred KB on disk whatever
    its decoded size."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = (b"\x00" + bytes(side * channels * bit_depth // 8)) * 64
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(rows[: (min(64, side - top)) * len(rows) // 64])
                    for top in range(0, side, 64)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body)
            + chunk(b"IEND", b""))


def _flat_tiff(side: int, mode: str) -> bytes:
    return _encoded(Image.new(mode, (side, side), 0.5 if mode == "F" else 300), "TIFF",
                    compression="tiff_adobe_deflate")


_PEAK = """
import sys
from labeler.io.decode import DEFAULT_MAX_DECODED_PIXELS, decode_image

def high_water():  # this process image's peak resident memory (ru_maxrss counts the parent's)
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))

data = open(sys.argv[1], "rb").read()
before = high_water()
decoded = decode_image(data, max_decoded_pixels=DEFAULT_MAX_DECODED_PIXELS)
print(decoded.width * decoded.height, high_water() - before)
"""

#: The bound documented in labeler/io/decode.py ("Memory bound"): Pillow's buffer of the stored
#: pixels (bytes per pixel of the mode it holds), 16 bytes per decoded pixel, one strip.
_BYTES_PER_DECODED_PIXEL, _STRIP_BYTES = 16, 32 * 2**20


@pytest.mark.parametrize(("name", "make", "held_bytes"), [
    ("16-bit gray PNG, 9400x9400 (took 953 MB)", lambda: _flat_png(9400, 16, 0, 1), 2),
    ("16-bit gray+alpha PNG, 4500x4500", lambda: _flat_png(4500, 16, 4, 2), 4),
    ("32-bit float TIFF, 4096x4096 (took 513 MB)", lambda: _flat_tiff(4096, "F"), 4),
])
def test_decoding_wide_inputs_stays_within_the_stated_memory_bound(tmp_path, name, make, held_bytes):
    """Measured as the peak resident memory a fresh process gains while decoding the file."""
    path = tmp_path / "image"
    data = make()
    path.write_bytes(data)
    assert len(data) < 2_000_000  # small on disk
    stored = Image.open(io.BytesIO(data)).size
    result = subprocess.run([sys.executable, "-c", _PEAK, str(path)], capture_output=True,
                            text=True, check=True, timeout=300, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(Path(labeler.__file__).parents[1])})
    decoded, peak = map(int, result.stdout.split())
    assert decoded <= DEFAULT_MAX_DECODED_PIXELS
    bound = held_bytes * stored[0] * stored[1] + _BYTES_PER_DECODED_PIXEL * decoded + _STRIP_BYTES
    assert peak <= bound, f"{name}: {peak / 2**20:.0f} MB > {bound / 2**20:.0f} MB"


def test_labels_of_a_downscaled_image_are_reported_at_its_stored_size(tmp_path, monkeypatch):
    monkeypatch.setattr(shard_module, "DEFAULT_MAX_DECODED_PIXELS", 20_000)
    (tmp_path / "big.png").write_bytes(_encoded(_halves(600, 400), "PNG"))
    run = RunFolder(Folder(str(tmp_path / "out")))
    shard_id = plan_run(run, [{"uri": str(tmp_path / "big.png")}], shard_size=1)["shards"][0][
        "shard_id"]
    segmenter = HalvesSegmenter()
    ShardProcessor(segmenter, 2, None, "run").process(run.output, shard_id)

    assert segmenter.sizes[0][0] * segmenter.sizes[0][1] <= 20_000
    with run.output.open(run.shard_part(shard_id, "images.parquet")) as handle:
        image = pq.read_table(handle).to_pylist()[0]
    assert (image["width"], image["height"]) == (600, 400)
    with run.output.open(run.shard_part(shard_id, "annotations.parquet")) as handle:
        annotations = pq.read_table(handle).to_pylist()
    assert [a["segmentation_size"] for a in annotations] == [[400, 600]] * 2
    right = mask_utils.decode({"size": [400, 600],
                               "counts": annotations[1]["segmentation_counts"].encode()})
    assert right[:, 305:].all() and not right[:, :295].any()
    assert annotations[0]["area"] + annotations[1]["area"] == 600 * 400


@pytest.mark.slow
def test_two_9400_pixel_pngs_at_batch_2_stay_under_2_gb(tmp_path):
    """The reproduced fault: two 9400x9400 PNGs took a worker to 6.9 GB."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "huge_images.py"), "--side", "9400",
         "--work", str(tmp_path), "--json"],
        capture_output=True, text=True, check=True, timeout=900,
    )
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["labeled"] == 2 and figures["coco_sizes"] == [[9400, 9400]] * 2
    assert figures["peak_rss_mb"] < 2048, figures
