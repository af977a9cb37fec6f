"""Synthetic test data."""

from __future__ import annotations

import numpy as np
import torch


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
