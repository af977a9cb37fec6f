"""Synthetic test data."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from labeler.methods.base import ImageLabels, MethodProvenance
from labeler.timing import StageTimer


def flat_regions_image(
    height: int = 256, width: int = 256, layout: str = "quadrants"
) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image of flat-colored regions and its region-index map.

    Returns:
        image (H, W, 3) uint8 and regions (H, W) int64.
    """
    regions = np.zeros((height, width), np.int64)
    if layout == "quadrants":
        regions[: height // 2, width // 2 :] = 1
        regions[height // 2 :, : width // 2] = 2
        regions[height // 2 :, width // 2 :] = 3
    elif layout == "halves":
        regions[:, width // 2 :] = 1
    else:
        raise ValueError(layout)
    palette = np.array([[220, 30, 30], [30, 200, 40], [30, 60, 220], [240, 220, 40]], np.uint8)
    return palette[regions], regions


def fill_zero_weights(module: torch.nn.Module, seed: int = 2, scale: float = 0.02) -> None:
    """Fill every all-zero weight matrix of ``module`` with small seeded noise, in place.

    The calibrated tiny UNet zeroes its residual branches (docs/tiny-model.md), so attention
    outputs never reach the UNet's output; tests of what attention changes use a copy filled so.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.ndim > 1 and not parameter.any():
                parameter.copy_(scale * torch.randn(parameter.shape, generator=generator))


class HalvesSegmenter:
    """Labels the left half 0 and the right half 1, at whatever size it is given; records the
    sizes it saw and says its ``decode_side`` (None: full size)."""

    categories: ClassVar[list[dict]] = [{"id": 1, "name": "left", "supercategory": "x"},
                                        {"id": 2, "name": "right", "supercategory": "x"}]

    def __init__(self, decode_side: int | None = None) -> None:
        self.decode_side = decode_side
        self.sizes: list[tuple[int, int]] = []
        self.timer = StageTimer()
        self.device = "cpu"

    def provenance(self) -> MethodProvenance:
        return MethodProvenance(method="test", model="none")

    def label(self, images: list[np.ndarray]) -> list[ImageLabels]:
        results = []
        for image in images:
            height, width = image.shape[:2]
            self.sizes.append((height, width))
            label_map = np.zeros((height, width), np.int32)
            label_map[:, width // 2:] = 1
            results.append(ImageLabels(label_map, np.array([1, 2]), np.ones(2)))
        return results
