"""A tiny DiffewS checkpoint, a synthetic support set and `labeler run` helpers for the DiffewS tests."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

from labeler.cli import main
from labeler.methods.diffews.model import duplicate_and_halve, install_dual_conv, write_checkpoint
from labeler.models.backbone import load_backbone
from tests.helpers import fill_zero_weights, flat_regions_image


def tiny_checkpoint(folder: Path) -> Path:
    """The tiny model with a support conv (duplicate-and-halve init, slightly perturbed so the
    support's mask half matters), written as a DiffewS checkpoint folder.

    The calibrated tiny UNet has its residual branches zeroed (docs/tiny-model.md), so attention
    outputs never reach the UNet's output; a fine-tuned DiffewS UNet has no such zeros, so the
    checkpoint fills every all-zero UNet weight with small seeded noise.
    """
    backbone = load_backbone("tiny")
    fill_zero_weights(backbone.unet)
    support = duplicate_and_halve(backbone.unet.conv_in)
    with torch.no_grad():
        support.weight.add_(0.05 * torch.randn(support.weight.shape, generator=torch.Generator().manual_seed(1)))
    install_dual_conv(backbone.unet, support)
    return write_checkpoint(backbone, folder)


def support_folder(folder: Path) -> Path:
    """Two annotated images (PNG label maps over background, red, green) sharing one folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, layout in (("one", "quadrants"), ("two", "halves")):
        image, regions = flat_regions_image(96, 128, layout)
        Image.fromarray(image).save(folder / f"{name}.jpg", quality=95)
        np.save(folder / f"{name}.npy", regions.clip(0, 2))
    return folder


def run_cli(*args: str) -> tuple[int, str]:
    """``labeler run ARGS --no-progress`` in this process, on the in-process executor:
    (exit status, stdout)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["run", *args, "--executor", "local", "--no-progress"])
    return code, out.getvalue()


def image_rows(output: Path) -> dict[str, dict]:
    """The rows of ``output``'s images.parquet, by the image's file name."""
    return {row["uri"].rsplit("/", 1)[-1]: row for row in pq.read_table(output / "images.parquet").to_pylist()}


def official_relative_decision(decoded: torch.Tensor, ratio: float = 0.25) -> torch.Tensor:
    """The reference's relative decision, step by step as documented (diffews.md section 1.4):
    the pipeline's seg path (clip, ``* 0.5 + 0.5``, ``* 255``, clip to [0, 255], numpy ``astype``
    uint8, PIL image), then ``to_tensor`` (``/ 255`` in float32) and
    ``mean over channels > max of the 3-channel tensor * r``.

    Args:
        decoded: (1, 3, H, W) VAE decoder output (batch 1, as the reference evaluates).

    Returns:
        (1, H, W) bool.
    """
    seg = torch.clip(decoded.float(), -1.0, 1.0) * 0.5 + 0.5
    seg = seg * 255
    levels = seg.clip(0, 255).numpy().astype(np.uint8)
    image = Image.fromarray(levels[0].transpose(1, 2, 0))
    read = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float().div(255)
    threshold = read.max() * ratio
    return read.mean(dim=1) > threshold

