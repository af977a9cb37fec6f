"""Procedural images with known regions, to measure what the `tiny` model's labels mean.

Every generator takes a numpy ``Generator`` (so a seed fixes the world) and returns an
(H, W, 3) uint8 RGB image with an (H, W) int64 map of the true regions or classes.
"""

from __future__ import annotations

import numpy as np

#: Well separated base colours (RGB) for the regions of :func:`region_world`.
PALETTE = np.array([
    [230, 60, 50], [50, 90, 220], [240, 210, 60], [60, 170, 80], [150, 70, 190],
    [240, 140, 40], [40, 190, 200], [120, 120, 120], [245, 245, 240], [30, 30, 35],
], np.float64)
#: Classes of :func:`slime_world`.
SLIME_CLASSES = ("background", "red", "blue")
#: Classes of :func:`few_shot_world` and their base colours (RGB; the background is a textured grey).
FEW_SHOT_CLASSES = ("background", "red", "blue", "yellow")
FEW_SHOT_COLOURS = np.array([[130, 130, 125], [220, 45, 40], [45, 70, 215], [235, 205, 50]], np.float64)


def _shape_mask(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    """(size, size) bool: a random ellipse, rectangle or triangle of about ``scale * size``."""
    yy, xx = np.mgrid[:size, :size] / size
    cy, cx = rng.uniform(0.15, 0.85, 2)
    ry, rx = scale * rng.uniform(0.5, 1.0, 2)
    kind = rng.integers(3)
    if kind == 0:
        return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    if kind == 1:
        return (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
    # triangle: below a line through the apex, inside two slanted edges
    apex = cy - ry
    inside = (yy >= apex) & (yy <= cy + ry)
    half = (yy - apex) / (2 * ry) * rx
    return inside & (np.abs(xx - cx) <= half)


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size) in [-1, 1]: flat (zeros), stripes or a checkerboard of random period."""
    kind = rng.integers(3)
    if kind == 0:
        return np.zeros((size, size))
    period = int(rng.integers(4, 9))
    yy, xx = np.mgrid[:size, :size]
    if kind == 1:
        angle = rng.uniform(0, np.pi)
        phase = (np.cos(angle) * xx + np.sin(angle) * yy) / period
        return np.where(np.floor(phase) % 2 == 0, 1.0, -1.0)
    return np.where((xx // period + yy // period) % 2 == 0, 1.0, -1.0)


def region_world(rng: np.random.Generator, size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """A background plus 2-6 overlapping shapes, each one colour (some textured).

    Returns:
        image (size, size, 3) uint8 and regions (size, size) int64: 0 background, then the
        visible part of each shape (occluded shapes may vanish; ids are compacted).
    """
    count = int(rng.integers(2, 7))
    colours = rng.permutation(len(PALETTE))[: count + 1]
    regions = np.zeros((size, size), np.int64)
    image = np.zeros((size, size, 3))
    layers = [np.ones((size, size), bool)] + [
        _shape_mask(rng, size, rng.uniform(0.12, 0.35)) for _ in range(count)
    ]
    for index, (mask, colour) in enumerate(zip(layers, colours)):
        amplitude = rng.uniform(25, 45)
        pattern = _texture(rng, size)[..., None] * amplitude
        base = PALETTE[colour] + rng.uniform(-15, 15, 3)
        image[mask] = (base + pattern)[mask]
        regions[mask] = index
    image += rng.normal(0, 4, image.shape)
    _, regions = np.unique(regions, return_inverse=True)
    return np.clip(image, 0, 255).astype(np.uint8), regions.reshape(size, size)


def slime_world(rng: np.random.Generator, size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Red and blue objects (1-3 each, varied shapes and sizes) on a green, textured ground.

    Returns:
        image (size, size, 3) uint8 and classes (size, size) int64 (indices of SLIME_CLASSES).
    """
    classes = np.zeros((size, size), np.int64)
    objects = [1] * int(rng.integers(1, 4)) + [2] * int(rng.integers(1, 4))
    for label in rng.permutation(objects):
        classes[_shape_mask(rng, size, rng.uniform(0.1, 0.3))] = label
    colours = np.array([[90, 160, 90], [220, 40, 40], [40, 60, 210]], np.float64)
    colours += rng.uniform(-20, 20, colours.shape)
    image = colours[classes]
    image += _texture(rng, size)[..., None] * 20 * (classes == 0)[..., None]
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), classes


def few_shot_world(rng: np.random.Generator, size: int = 512,
                   present: tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Objects of several colour classes on a textured grey ground, for one-shot tests: which
    colour is "the class" is only said by a support mask.

    Args:
        present: the object classes (indices of FEW_SHOT_CLASSES, 1..3) in the image, 1-2
            objects each; default: two of the three, drawn.

    Returns:
        image (size, size, 3) uint8 and classes (size, size) int64 (a class may end up fully
        occluded).
    """
    if present is None:
        present = tuple(int(c) for c in 1 + rng.permutation(len(FEW_SHOT_CLASSES) - 1)[:2])
    classes = np.zeros((size, size), np.int64)
    objects = [c for c in present for _ in range(int(rng.integers(1, 3)))]
    for label in rng.permutation(objects):
        classes[_shape_mask(rng, size, rng.uniform(0.12, 0.3))] = label
    colours = FEW_SHOT_COLOURS + rng.uniform(-15, 15, FEW_SHOT_COLOURS.shape)
    image = colours[classes]
    image += _texture(rng, size)[..., None] * 25 * (classes == 0)[..., None]
    image += rng.normal(0, 5, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), classes


def voronoi_partition(rng: np.random.Generator, size: int, count: int) -> np.ndarray:
    """(size, size) int64: a random spatially coherent partition into ``count`` cells."""
    centres = rng.uniform(0, size, (max(count, 1), 2))
    yy, xx = np.mgrid[:size, :size]
    distance = (yy[..., None] - centres[:, 0]) ** 2 + (xx[..., None] - centres[:, 1]) ** 2
    return distance.argmin(-1)


def adjusted_rand_index(labels: np.ndarray, truth: np.ndarray) -> float:
    """Adjusted Rand index (Hubert and Arabie) of two (H, W) integer partitions."""
    _, a = np.unique(labels.ravel(), return_inverse=True)
    _, b = np.unique(truth.ravel(), return_inverse=True)
    table = np.zeros((a.max() + 1, b.max() + 1), np.float64)
    np.add.at(table, (a, b), 1.0)

    def pairs(x):
        return float((x * (x - 1) / 2).sum())

    index = pairs(table)
    rows, cols = pairs(table.sum(1)), pairs(table.sum(0))
    expected = rows * cols / pairs(np.array([table.sum()]))
    maximum = (rows + cols) / 2
    if maximum == expected:
        return 1.0
    return (index - expected) / (maximum - expected)
