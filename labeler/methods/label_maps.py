"""Nearest-neighbour resizing of label maps from the label grid to the original resolution."""

from __future__ import annotations

import numpy as np


def nearest_indices(size_out: int, size_in: int) -> np.ndarray:
    """Source index of each output position of a nearest resize, half-pixel centres: (size_out,)."""
    return np.minimum(
        ((np.arange(size_out) + 0.5) * size_in / size_out).astype(np.int64), size_in - 1
    )


def resize_labels(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of an (h, w) label map to (height, width), half-pixel centres."""
    if labels.shape == (height, width):
        return labels
    rows = nearest_indices(height, labels.shape[0])
    cols = nearest_indices(width, labels.shape[1])
    return labels[rows[:, None], cols[None, :]]


def axis_weights(size_out: int, size_in: int) -> np.ndarray:
    """How many of ``size_out`` output positions each of ``size_in`` input positions becomes
    under a nearest resize along one axis: (size_in,) int64."""
    return np.bincount(nearest_indices(size_out, size_in), minlength=size_in)


def resize_weights(grid: tuple[int, int], height: int, width: int) -> np.ndarray:
    """How many (height, width) pixels each cell of an (h, w) grid becomes under
    :func:`resize_labels`: (h, w) int64."""
    return axis_weights(height, grid[0])[:, None] * axis_weights(width, grid[1])[None, :]
