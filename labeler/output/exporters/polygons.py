"""Binary masks to polygons, holes and fragments included.

Contours are traced with OpenCV (``findContours``, ``RETR_CCOMP``: outer boundaries and their
holes) on the mask upsampled 2x, so vertices lie a quarter pixel inside the pixel edges instead of
on pixel centres (half a pixel inside), which halves the area lost at every boundary. Coordinates
are COCO's: pixel ``(x, y)`` covers ``[x, x+1) x [y, y+1)``.

A hole is joined to its outer boundary by a zero-width cut (out along one segment, around the
hole, back along the same segment), so each fragment is one simple polygon that every
polygon rasteriser (pycocotools, Label Studio, CVAT) fills with its hole left open.
:func:`single_polygon` joins the fragments of a mask the same way, for formats that allow one
polygon per instance (YOLO-seg).

``tolerance`` (pixels) simplifies each boundary with Douglas-Peucker (``approxPolyDP``); 0 keeps
every corner of the traced boundary.
"""

from __future__ import annotations

import cv2
import numpy as np

#: Upsampling of the mask before tracing (vertices 1 / (2 * UPSAMPLE) pixel inside the edges).
UPSAMPLE = 2


def mask_polygons(mask: np.ndarray, tolerance: float = 0.0) -> list[np.ndarray]:
    """Polygons of an (H, W) binary mask: one per connected fragment, its holes joined in.

    Returns:
        a list of (N, 2) float arrays of ``(x, y)`` vertices (N >= 3), in COCO pixel coordinates.
    """
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return []
    x0, y0 = int(xs.min()), int(ys.min())
    crop = np.ascontiguousarray(mask[y0 : ys.max() + 1, x0 : xs.max() + 1], dtype=np.uint8)
    crop = np.pad(crop, 1)
    big = np.kron(crop, np.ones((UPSAMPLE, UPSAMPLE), np.uint8))
    contours, hierarchy = cv2.findContours(big, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return []
    hierarchy = hierarchy[0]  # rows: next, previous, first child, parent
    polygons = []
    for index, contour in enumerate(contours):
        if hierarchy[index][3] != -1:
            continue  # a hole: joined into its outer boundary below
        outer = _to_pixels(_simplify(contour, tolerance), x0, y0)
        child = hierarchy[index][2]
        while child != -1:
            hole = _to_pixels(_simplify(contours[child], tolerance), x0, y0)
            if len(hole) >= 3:
                outer = bridge(outer, hole)
            child = hierarchy[child][0]
        if len(outer) >= 3:
            polygons.append(outer)
    return polygons


def polygon_area(polygon: np.ndarray) -> float:
    """The area (pixels) enclosed by an (N, 2) polygon; a hole joined by a cut is subtracted."""
    x, y = polygon[:, 0], polygon[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


def single_polygon(polygons: list[np.ndarray]) -> np.ndarray | None:
    """All fragments joined into one polygon by zero-width cuts (``None`` for no polygon)."""
    if not polygons:
        return None
    joined = polygons[0]
    for polygon in polygons[1:]:
        joined = bridge(joined, polygon)
    return joined


def bridge(outer: np.ndarray, other: np.ndarray) -> np.ndarray:
    """``outer`` with ``other`` spliced in at their closest vertices (there and back again)."""
    distances = ((outer[:, None, :] - other[None, :, :]) ** 2).sum(axis=2)
    i, j = np.unravel_index(int(np.argmin(distances)), distances.shape)
    loop = np.concatenate([other[j:], other[: j + 1]])
    return np.concatenate([outer[: i + 1], loop, outer[i:]])


def _simplify(contour: np.ndarray, tolerance: float) -> np.ndarray:
    if tolerance > 0:
        contour = cv2.approxPolyDP(contour, tolerance * UPSAMPLE, True)
    return contour.reshape(-1, 2)


def _to_pixels(points: np.ndarray, x0: int, y0: int) -> np.ndarray:
    """Upsampled, padded crop coordinates (sub-pixel centres) to COCO image coordinates."""
    return (points.astype(np.float64) + 0.5) / UPSAMPLE - 1.0 + np.array([x0, y0], np.float64)
