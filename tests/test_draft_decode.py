"""Decoding what the method needs (issue 27): images reduced while both sides stay >= the
method's input side, full size in the parity modes, labels at the stored size, the scale
recorded per image."""

from __future__ import annotations

import io
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from labeler.config import build_config
from labeler.io.decode import decode_image, side_factor
from labeler.io.folders import Folder
from labeler.methods.base import decode_side
from labeler.methods.diffews.settings import DiffewsOptions
from labeler.methods.diffseg.settings import DiffSegOptions
from labeler.methods.slime.settings import SlimeOptions
from labeler.runtime.plan import plan_run
from labeler.runtime.run_folder import RunFolder
from labeler.runtime.shard import ShardProcessor
from tests.helpers import HalvesSegmenter


def _image(width: int, height: int, fmt: str) -> bytes:
    """Left half red, right half blue, some texture."""
    rng = np.random.default_rng(width * height)
    pixels = rng.integers(0, 40, (height, width, 3), dtype=np.uint8)
    pixels[:, : width // 2, 0] += 200
    pixels[:, width // 2:, 2] += 200
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def _fits(width: int, height: int, scale: int, side: int) -> bool:
    return math.ceil(width / scale) >= side and math.ceil(height / scale) >= side


@pytest.mark.parametrize(("width", "height", "side", "scale"), [
    (4032, 3024, 512, 4),   # 1008x756; 1/8 would be 504x378
    (1024, 768, 512, 1),    # 1/2 would be 512x384
    (2048, 1100, 512, 2),
    (1100, 2048, 512, 2),
    (8000, 6000, 512, 8),   # 1000x750: DCT 1/8, and no box reduce fits after it
    (600, 400, 64, 4),      # 150x100; 1/8 would be 75x50
    (512, 512, 512, 1),
    (300, 200, 512, 1),     # smaller than the input: never enlarged, never reduced
])
def test_a_jpeg_is_decoded_at_the_smallest_dct_scale_whose_sides_stay_at_the_input(
        width, height, side, scale):
    decoded = decode_image(_image(width, height, "JPEG"), needed_side=side)
    assert decoded.scale == scale
    assert (decoded.width, decoded.height) == (math.ceil(width / scale), math.ceil(height / scale))
    assert (decoded.original_width, decoded.original_height) == (width, height)
    assert scale == 1 or min(decoded.width, decoded.height) >= side
    if scale < 8 and min(width, height) > side:
        assert not _fits(width, height, 2 * scale, side)  # the next DCT scale would be too small


@pytest.mark.parametrize(("width", "height", "side"), [
    (4032, 3024, 512), (1024, 768, 512), (1536, 1536, 512), (1537, 900, 300), (640, 427, 64)])
def test_other_formats_are_box_reduced_by_the_largest_factor_that_fits(width, height, side):
    decoded = decode_image(_image(width, height, "PNG"), needed_side=side)
    scale = decoded.scale
    assert scale == side_factor(width, height, side)
    assert (decoded.width, decoded.height) == (math.ceil(width / scale), math.ceil(height / scale))
    assert min(decoded.width, decoded.height) >= min(side, width, height)
    assert not _fits(width, height, scale + 1, side)
    left, right = decoded.pixels[:, 2].mean(axis=0), decoded.pixels[:, -3].mean(axis=0)
    assert left[0] > 180 and right[2] > 180  # the content survives


def test_the_memory_bound_wins_over_the_side():
    decoded = decode_image(_image(2400, 600, "PNG"), needed_side=512, max_decoded_pixels=200_000)
    assert decoded.width * decoded.height <= 200_000 and decoded.scale == 3


def test_without_a_side_the_image_is_decoded_at_full_size():
    data = _image(2048, 1536, "JPEG")
    full = decode_image(data)
    assert (full.scale, full.width, full.height) == (1, 2048, 1536)


@pytest.mark.parametrize(("settings", "side"), [
    (DiffSegOptions(), 512),
    (DiffSegOptions(antialias=False), None),          # the reference's resize
    (SlimeOptions(), 512),
    (SlimeOptions(resize="reference"), None),         # OpenCV on uint8, as the reference
    (SlimeOptions(antialias=False), None),
    (DiffewsOptions(), 512),
    (DiffewsOptions(rule="relative"), None),          # the reference's decision
    (DiffewsOptions(antialias=False), None),
])
def test_parity_modes_decode_at_full_size(settings, side):
    assert settings.decode_side(512) == side


@pytest.mark.parametrize(("draft_decode", "seen", "scale"), [(True, (100, 150), 4),
                                                            (False, (400, 600), 1)])
def test_labels_stay_at_the_stored_size_and_the_scale_is_recorded(tmp_path, draft_decode, seen,
                                                                  scale):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "photo.jpg").write_bytes(_image(600, 400, "JPEG"))
    config = build_config({"draft_decode": draft_decode},
                          {"input": str(tmp_path / "in"), "output": str(tmp_path / "out")})
    segmenter = HalvesSegmenter(64)
    run = RunFolder(Folder(str(tmp_path / "out")))
    shard_id = plan_run(run, [{"uri": str(tmp_path / "in" / "photo.jpg")}], shard_size=1)[
        "shards"][0]["shard_id"]
    processor = ShardProcessor(segmenter, 1, None, "run",
                               decode_side=config.decode_side_for(segmenter))
    stats = processor.process(run.output, shard_id)
    processor.close()

    assert segmenter.sizes == [seen]
    assert stats["decode_side"] == (64 if draft_decode else None)
    with run.output.open(run.shard_part(shard_id, "images.parquet")) as handle:
        image = pq.read_table(handle).to_pylist()[0]
    assert (image["width"], image["height"], image["decode_scale"]) == (600, 400, scale)
    with run.output.open(run.shard_part(shard_id, "annotations.parquet")) as handle:
        annotations = pq.read_table(handle).to_pylist()
    assert [a["segmentation_size"] for a in annotations] == [[400, 600]] * 2
    assert [a["area"] for a in annotations] == [300 * 400] * 2


def test_a_segmenter_that_does_not_say_is_decoded_at_full_size():
    class Silent:
        """A segmenter that declares no decode side."""

    silent, sized = Silent(), HalvesSegmenter(512)
    config = build_config({}, {"input": "in", "output": "out"})
    assert decode_side(silent) is None and config.decode_side_for(silent) is None
    assert config.decode_side_for(sized) == 512
    assert config.draft_decode and "draft_decode" not in config.output_settings()
    off = build_config({"draft_decode": False}, {"input": "in", "output": "out"})
    assert off.decode_side_for(sized) is None and off.output_settings()["draft_decode"] is False
