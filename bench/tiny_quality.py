"""Do the default recipes learn on the offline `tiny` model? DiffSeg ARI and SLiMe one-shot mIoU.

Synthetic worlds (:mod:`labeler.models.synthetic_world`): regions separable by colour or texture,
varied shapes, sizes and counts. DiffSeg runs at its defaults (KL threshold 1.1) on held-out
seeds and is scored by the adjusted Rand index against the true regions, next to a random
spatially coherent partition with the same number of segments (a Voronoi tiling). SLiMe fits on
ONE annotated image with the default recipe (``labeler slime fit --model tiny``: SD loss on,
200 epochs, 512 px) and labels held-out images of the same world (per-image mIoU over present
classes).

    python bench/tiny_quality.py --diffseg-images 8 --slime-seeds 0,1 [--epochs 200] [--fit-size 512]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from labeler.methods.diffseg.segmenter import DiffSeg
from labeler.methods.slime.algorithm import mean_iou_present
from labeler.methods.slime.data import AnnotatedImage
from labeler.methods.slime.fit import FitSettings, fit_embedding_set
from labeler.methods.slime.segmenter import Slime
from labeler.models.backbone import load_backbone
from labeler.models.synthetic_world import (
    SLIME_CLASSES,
    adjusted_rand_index,
    region_world,
    slime_world,
    voronoi_partition,
)


def diffseg_scores(backbone, seeds: list[int], size: int) -> dict:
    """Mean ARI of DiffSeg (defaults) and of a Voronoi partition with as many segments."""
    segmenter = DiffSeg(backbone)
    rows = []
    for seed in seeds:
        image, truth = region_world(np.random.default_rng(seed), size)
        labels = segmenter.label([image])[0].label_map
        n_segments = len(np.unique(labels))
        baseline = voronoi_partition(np.random.default_rng(seed + 10_000), size, n_segments)
        rows.append({
            "seed": seed,
            "regions": len(np.unique(truth)),
            "segments": int(n_segments),
            "ari": adjusted_rand_index(labels, truth),
            "ari_voronoi": adjusted_rand_index(baseline, truth),
        })
    segmenter.close()
    return {
        "rows": rows,
        "ari": float(np.mean([r["ari"] for r in rows])),
        "ari_voronoi": float(np.mean([r["ari_voronoi"] for r in rows])),
    }


def slime_scores(backbone, seed: int, settings: FitSettings, held_out: int, size: int) -> dict:
    """Fit on one image of world ``seed``, score held-out images (per-image mIoU)."""
    rng = np.random.default_rng(seed)
    image, mask = slime_world(rng, size)
    tests = [slime_world(rng, size) for _ in range(held_out)]
    start = time.perf_counter()
    fitted = fit_embedding_set(backbone, [AnnotatedImage("one", image, mask, "0" * 16)],
                               SLIME_CLASSES, settings, progress=False)
    fit_s = time.perf_counter() - start
    segmenter = Slime(backbone, fitted, seed=seed)
    predictions = segmenter.predict([held for held, _ in tests])
    segmenter.close()
    scores = [mean_iou_present(labels, truth, len(SLIME_CLASSES))
              for (labels, _), (_, truth) in zip(predictions, tests)]
    return {"seed": seed, "miou": float(np.mean(scores)), "per_image": scores, "fit_s": fit_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--diffseg-images", type=int, default=8)
    parser.add_argument("--slime-seeds", default="0,1")
    parser.add_argument("--held-out", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--fit-size", type=int, default=None)
    parser.add_argument("--size", type=int, default=512, help="side of the synthetic images")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    backbone = load_backbone("tiny", device=args.device)
    report = {}
    if args.diffseg_images:
        report["diffseg"] = diffseg_scores(backbone, list(range(100, 100 + args.diffseg_images)),
                                           args.size)
    seeds = [int(s) for s in args.slime_seeds.split(",") if s]
    settings = FitSettings(epochs=args.epochs, fit_size=args.fit_size)
    report["slime"] = [slime_scores(backbone, seed, settings, args.held_out, args.size)
                       for seed in seeds]
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
