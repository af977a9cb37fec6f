"""Do the default recipes learn on the offline `tiny` model? DiffSeg ARI, SLiMe and DiffewS one-shot.

Synthetic worlds (:mod:`labeler.testing.worlds`): regions separable by colour or texture,
varied shapes, sizes and counts. DiffSeg runs at its defaults (KL threshold 1.1) on held-out
seeds and is scored by the adjusted Rand index against the true regions, next to a random
spatially coherent partition with the same number of segments (a Voronoi tiling). SLiMe fits on
ONE annotated image with the default recipe (``labeler slime fit --model tiny``: SD loss on,
200 epochs, 512 px) and labels held-out images of the same world (per-image mIoU over present
classes). DiffewS fine-tunes from tiny (``labeler diffews train`` defaults on tiny, one episode per
step) on 16 images of :func:`~labeler.testing.worlds.few_shot_world` and is scored by
held-out one-shot IoU through the run path, before and after, plus the share of absent-class
queries that get any annotation.

    python bench/tiny_quality.py --diffseg-images 8 --slime-seeds 0,1 [--epochs 200] [--fit-size 512]
    python bench/tiny_quality.py --diffseg-images 0 --slime-seeds "" --diffews-seeds 0,1 --diffews-steps 240
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from labeler.methods.annotations import AnnotatedImage
from labeler.methods.diffews.model import load_diffews_backbone, write_checkpoint
from labeler.methods.diffews.settings import DiffewsOptions
from labeler.methods.diffews.train import TrainSettings, prepare_unet, train
from labeler.methods.diffseg.segmenter import DiffSeg
from labeler.methods.slime.algorithm import mean_iou_present
from labeler.methods.slime.fit import FitSettings, fit_embedding_set
from labeler.methods.slime.segmenter import Slime
from labeler.models.backbone import load_backbone
from labeler.testing.diffews_scores import (
    few_shot_episodes,
    label_episode,
    one_shot_ious,
    support_dependence,
)
from labeler.testing.worlds import (
    FEW_SHOT_CLASSES,
    SLIME_CLASSES,
    adjusted_rand_index,
    few_shot_world,
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


def diffews_scores(checkpoint: Path, size: int, episodes: int) -> dict:
    """Held-out one-shot IoU (mean, per episode), the share of absent-class queries labelled, and
    whether the model reads the support mask (soft value on the class with the class support vs
    with the complement support; equal values: the mask is ignored)."""
    backbone, weights = load_diffews_backbone(str(checkpoint))
    options = DiffewsOptions(input_size=size, cache_banks=False)
    present = few_shot_episodes(2000, episodes, size)
    ious = one_shot_ious(backbone, weights, present, options)
    absent = [bool(label_episode(backbone, weights, episode, options).any())
              for episode in few_shot_episodes(3000, episodes, size, absent=True)]
    dependence = np.array([support_dependence(backbone, weights, episode, options) for episode in present])
    return {"iou": float(np.mean(ious)), "per_episode": ious, "absent_labelled": float(np.mean(absent)),
            "soft_on_class_with_class_support": float(dependence[:, 0].mean()),
            "soft_on_class_with_complement_support": float(dependence[:, 1].mean())}


def diffews_runs(seeds: list[int], steps: int, size: int, episodes: int) -> dict:
    """Untrained start vs ``steps`` one-episode steps of fine-tuning from tiny, per seed."""
    folder = Path(tempfile.mkdtemp(prefix="tiny-diffews-"))
    start = load_backbone("tiny", device="cpu", dtype=torch.float32)
    prepare_unet("tiny", start.unet)
    report = {"untrained": diffews_scores(write_checkpoint(start, folder / "untrained"), size, episodes)}
    for seed in seeds:
        rng = np.random.default_rng(seed)
        samples = [AnnotatedImage(f"{seed}-{i}", *few_shot_world(rng, size), f"{seed:016x}")
                   for i in range(16)]
        settings = TrainSettings(steps=steps, accumulation=1, size=size, save_every=steps, seed=seed)
        began = time.perf_counter()
        summary = train(samples, FEW_SHOT_CLASSES, folder / f"seed-{seed}", "tiny", settings, "cpu")
        report[f"seed {seed}"] = {"train_s": time.perf_counter() - began, "steps": steps,
                                  "lr": summary["lr"],
                                  **diffews_scores(folder / f"seed-{seed}", size, episodes)}
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--diffseg-images", type=int, default=8)
    parser.add_argument("--slime-seeds", default="0,1")
    parser.add_argument("--held-out", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--fit-size", type=int, default=None)
    parser.add_argument("--size", type=int, default=512, help="side of the synthetic images")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--diffews-seeds", default="", help="training seeds of the DiffewS section")
    parser.add_argument("--diffews-steps", type=int, default=240)
    parser.add_argument("--diffews-size", type=int, default=128)
    parser.add_argument("--diffews-episodes", type=int, default=12)
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
    diffews_seeds = [int(s) for s in args.diffews_seeds.split(",") if s]
    if diffews_seeds:
        report["diffews"] = diffews_runs(diffews_seeds, args.diffews_steps, args.diffews_size,
                                         args.diffews_episodes)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
