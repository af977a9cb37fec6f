"""Model input: the faster resize gives bit for bit the floats of the implementation it replaced
(kept here as the oracle), on the CPU, and the accelerator's within float rounding of them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labeler.methods.diffews import support
from labeler.methods.diffseg import segmenter as diffseg_segmenter
from labeler.methods.diffseg.segmenter import DiffSeg
from labeler.methods.preprocess import images_to_model_input, resize_image, resize_reference

REPO = Path(__file__).resolve().parent.parent

#: (height, width) of odd, tall, wide, upscaled, unchanged and phone-at-1/4 images, model side 64
#: (except the last two, at 512).
SIZES = [(37, 53), (91, 13), (13, 90), (64, 64), (40, 64), (64, 200), (30, 30), (101, 77)]


def oracle_resize_image(image: np.ndarray, size: int, antialias: bool, mode: str) -> torch.Tensor:
    """The implementation before the copies were cut: (3, size, size) float32 in [0, 255]."""
    if mode == "reference":
        image = resize_reference(image, size, size)
    tensor = torch.tensor(image).permute(2, 0, 1)[None].float()
    if tensor.shape[-2:] != (size, size):
        tensor = F.interpolate(
            tensor, size=(size, size), mode="bilinear", align_corners=False, antialias=antialias
        )
    return tensor[0]


def oracle_model_input(images: list[np.ndarray], size: int, antialias: bool,
                       resize: str) -> torch.Tensor:
    batch = [oracle_resize_image(image, size, antialias, resize) for image in images]
    return torch.stack(batch).div_(127.5).sub_(1.0).clamp_(-1.0, 1.0)


def photo(height: int, width: int, seed: int) -> np.ndarray:
    """(height, width, 3) uint8: noise over gradients, saturated corners (0 and 255 reach the
    clamp), read-only as a decoded image is."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / max(width - 1, 1), y * 255 / max(height - 1, 1),
                     (x + y) % 256], -1)
    image = np.clip(base + rng.normal(0, 40, (height, width, 3)), 0, 255).astype(np.uint8)
    image[: height // 4, : width // 4] = 255
    image[-(height // 4):, -(width // 4):] = 0
    image.flags.writeable = False
    return image


@pytest.mark.parametrize("resize", ["float", "reference"])
@pytest.mark.parametrize("antialias", [True, False])
def test_model_input_is_bit_identical_to_the_replaced_implementation(antialias, resize):
    images = [photo(height, width, seed) for seed, (height, width) in enumerate(SIZES)]
    new = images_to_model_input(images, 64, antialias, resize)
    assert new.dtype == torch.float32 and new.shape == (len(SIZES), 3, 64, 64)
    assert new.is_contiguous()
    assert torch.equal(new, oracle_model_input(images, 64, antialias, resize))
    for image in images:  # one by one as SLiMe's fit prepares them
        assert torch.equal(resize_image(image, 64, antialias, resize),
                           oracle_resize_image(image, 64, antialias, resize))


@pytest.mark.parametrize("shape", [(768, 1024), (756, 1008), (512, 512)])
def test_model_input_at_model_size_is_bit_identical(shape):
    image = photo(*shape, seed=3)
    for antialias in (True, False):
        assert torch.equal(images_to_model_input([image, image[::2, ::2].copy()], 512, antialias),
                           oracle_model_input([image, image[::2, ::2]], 512, antialias, "float"))


def test_model_input_takes_any_layout_of_array_and_empty_batches():
    image = photo(50, 70, seed=4)
    view = np.asarray(photo(70, 50, seed=4).transpose(1, 0, 2))  # a non-contiguous view
    for candidate in (image, view, np.ascontiguousarray(view)):
        assert torch.equal(images_to_model_input([candidate], 32),
                           oracle_model_input([np.ascontiguousarray(candidate)], 32, True, "float"))
    assert images_to_model_input([], 32).shape == (0, 3, 32, 32)


def test_model_input_off_the_cpu_takes_the_upload_path():
    """On another device (``meta`` here: shapes only) the bytes are uploaded and resized there."""
    images = [photo(37, 53, seed=1), photo(64, 64, seed=2)]
    for resize in ("float", "reference"):
        pixels = images_to_model_input(images, 64, resize=resize, device="meta")
        assert pixels.device.type == "meta" and pixels.shape == (2, 3, 64, 64)
        assert pixels.dtype == torch.float32
    assert resize_image(images[0], 64, False, device="meta").shape == (3, 64, 64)


def test_methods_build_their_model_input_on_the_model_device(tiny_backbone, monkeypatch):
    """DiffSeg and DiffewS support banks hand their backbone's device to the resize (the spy
    stops each at its model input: the rest is not this test's)."""
    devices = []

    class Recorded(Exception):
        """Raised by the spy: the method reached its model input."""

    def spy(*args, **kwargs):
        devices.append(kwargs.get("device"))
        raise Recorded

    monkeypatch.setattr(diffseg_segmenter, "images_to_model_input", spy)
    monkeypatch.setattr(support, "images_to_model_input", spy)
    image = photo(48, 64, seed=5)
    diffseg = DiffSeg(tiny_backbone)
    try:
        with pytest.raises(Recorded):
            diffseg.attention_maps([image])
    finally:
        diffseg.hooks.restore()  # the backbone is the session's: leave its processors as found
    with pytest.raises(Recorded):
        support.support_latents(tiny_backbone, [image], [np.zeros((48, 64), bool)], 64)
    assert devices == [tiny_backbone.device] * 2


@pytest.mark.gpu
@pytest.mark.parametrize("resize", ["float", "reference"])
@pytest.mark.parametrize("antialias", [True, False])
def test_model_input_on_cuda_matches_the_cpu_within_float_rounding(antialias, resize):
    images = [photo(height, width, seed) for seed, (height, width) in enumerate(SIZES)]
    images.append(photo(768, 1024, seed=9))
    for size in (64, 512):
        cpu = images_to_model_input(images, size, antialias, resize)
        cuda = images_to_model_input(images, size, antialias, resize, device="cuda")
        assert cuda.device.type == "cuda"
        torch.testing.assert_close(cuda.cpu(), cpu, atol=1e-5, rtol=0)


def test_preprocess_benchmark_checks_identity_and_ends_with_json():
    command = [sys.executable, str(REPO / "bench" / "preprocess_bench.py"), "--sizes", "40x24,16x16",
               "--side", "32", "--distinct", "2", "--repeat", "1", "--json"]
    done = subprocess.run(command, capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    rows = json.loads(done.stdout.strip().splitlines()[-1])["rows"]
    assert [(row["size"], row["antialias"]) for row in rows] == [
        ("40x24", True), ("40x24", False), ("16x16", True), ("16x16", False)]
    assert all(row["max_abs_difference"] == 0.0 and row["now_cpu_ms_per_image"] > 0
               and len(row["load_average"]) == 3 for row in rows)
