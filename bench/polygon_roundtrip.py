"""Round-trip IoU of the polygon exports: mask -> polygons -> pycocotools mask, per tolerance.

DiffSeg-like label maps: the argmax of ``--segments`` seeded, Gaussian-smoothed noise fields
(smooth, irregular segments, some of them in several fragments or with holes), ``--maps`` maps of
``--size`` pixels. Each segment's mask is traced by ``labeler.output.exporters.polygons
.mask_polygons`` at each tolerance and rasterised back by pycocotools (``frPyObjects`` + ``merge``,
the reading of every COCO consumer built on it). Prints one line per tolerance: mean and worst IoU
against the mask and the mean vertex count per mask; ``--json``: one JSON object last.

    .venv/bin/python bench/polygon_roundtrip.py
    .venv/bin/python bench/polygon_roundtrip.py --size 512 --segments 8 --maps 3 --json
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
from pycocotools import mask as mask_utils
from scipy.ndimage import gaussian_filter

from labeler.output.exporters.polygons import mask_polygons


def label_maps(count: int, size: int, segments: int, seed: int) -> list[np.ndarray]:
    """``count`` (size, size) int maps of ``segments`` smooth regions each."""
    generator = np.random.default_rng(seed)
    maps = []
    for _ in range(count):
        noise = generator.standard_normal((segments, size, size))
        fields = np.stack([gaussian_filter(channel, sigma=size / 10) for channel in noise])
        maps.append(fields.argmax(axis=0))
    return maps


def round_trip(mask: np.ndarray, tolerance: float) -> tuple[float, int]:
    """(IoU of the pycocotools reading of the polygons against ``mask``, vertex count)."""
    polygons = mask_polygons(mask, tolerance)
    height, width = mask.shape
    rles = mask_utils.frPyObjects([p.ravel().tolist() for p in polygons], height, width)
    decoded = mask_utils.decode(mask_utils.merge(rles)).astype(bool)
    truth = mask.astype(bool)
    return float((decoded & truth).sum() / (decoded | truth).sum()), sum(len(p) for p in polygons)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--segments", type=int, default=8)
    parser.add_argument("--maps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerances", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    masks = [(labels == value).astype(np.uint8)
             for labels in label_maps(args.maps, args.size, args.segments, args.seed)
             for value in np.unique(labels)]
    results = {"masks": len(masks), "size": args.size, "tolerances": {}}
    for tolerance in args.tolerances:
        measured = [round_trip(mask, tolerance) for mask in masks]
        ious = [iou for iou, _ in measured]
        row = {"mean_iou": float(np.mean(ious)), "worst_iou": float(np.min(ious)),
               "vertices_per_mask": float(np.mean([v for _, v in measured]))}
        results["tolerances"][str(tolerance)] = row
        sys.stdout.write(f"tolerance {tolerance}: mean IoU {row['mean_iou']:.4f}, worst "
                         f"{row['worst_iou']:.4f}, {row['vertices_per_mask']:.0f} vertices per "
                         f"mask ({len(masks)} masks)\n")
    if args.json:
        sys.stdout.write(json.dumps(results) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
