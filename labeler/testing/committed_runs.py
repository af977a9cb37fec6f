"""Committed runs made without a model: planned, every shard committed, ready to merge.

What ``labeler run`` leaves before its merge, synthesized fast enough for a million images: the
plan comes from the real planner (:func:`labeler.runtime.plan.plan_run`), every shard is
committed through the real commit (:func:`labeler.runtime.commit.commit_shard`) with its stats
and done marker, so merge, status, verify, export and resume see a genuine run. The masks are
real: a pool of label maps (Voronoi regions of a few image sizes, 20-30 regions each) is encoded
once; each image takes one map of the pool, so masks are distinct within an image and the
annotation rows (ids, scores, file names) are the image's own.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from labeler.config import JobConfig
from labeler.io.folders import Folder
from labeler.output import schema
from labeler.output.rle import EncodedMask, encode_label_map
from labeler.output.rows import annotation_id
from labeler.runtime.commit import commit_shard
from labeler.runtime.plan import plan_run
from labeler.runtime.run_folder import RunFolder

#: Image sizes (height, width) the pool's label maps have.
SIZES = ((480, 640), (512, 512), (375, 500), (640, 427))
CATEGORIES = [{"id": 1, "name": "segment", "supercategory": "segment"}]


@dataclass(frozen=True)
class PooledImage:
    """One label map of the pool, encoded: its size and its masks (each a distinct region)."""

    height: int
    width: int
    masks: list[EncodedMask]


def mask_pool(n_maps: int = 64, seed: int = 0) -> list[PooledImage]:
    """``n_maps`` label maps of :data:`SIZES` with 20-30 Voronoi regions each, encoded."""
    rng = np.random.default_rng(seed)
    pool = []
    for index in range(n_maps):
        height, width = SIZES[index % len(SIZES)]
        n_regions = int(rng.integers(20, 31))
        seeds = rng.uniform((0, 0), (height, width), (n_regions, 2))
        rows, cols = np.mgrid[0:height:4, 0:width:4]
        distance = ((rows[..., None] - seeds[:, 0]) ** 2 + (cols[..., None] - seeds[:, 1]) ** 2)
        coarse = distance.argmin(axis=-1).astype(np.int32)
        label_map = np.repeat(np.repeat(coarse, 4, axis=0), 4, axis=1)[:height, :width]
        masks = [mask for mask in encode_label_map(label_map, n_regions) if mask.area]
        pool.append(PooledImage(height, width, masks))
    return pool


def uris(n_images: int, prefix: str = "s3://bucket/collection") -> Iterator[dict]:
    """Plan items of a collection of ``n_images`` images."""
    for index in range(n_images):
        yield {"uri": f"{prefix}/{index // 1000:05d}/img{index:09d}.jpg"}


def config_for(output: str, shard_size: int) -> JobConfig:
    """The job a synthesized run claims to be (DiffSeg on the tiny model)."""
    return JobConfig(input="s3://bucket/collection/manifest.txt", output=output, model="tiny",
                     shard_size=shard_size)


def synthesize_run(output: str, n_images: int, shard_size: int = 256,
                   pool: list[PooledImage] | None = None) -> dict:
    """Plan and commit a run of ``n_images`` images under ``output``; returns the plan."""
    run = RunFolder(Folder(output))
    run.claim(config_for(output, shard_size))
    plan = plan_run(run, uris(n_images), shard_size)
    pool = pool or mask_pool()
    for shard in plan["shards"]:
        commit_synthetic_shard(run, shard["shard_id"], pool)
    return plan


def commit_synthetic_shard(run: RunFolder, shard_id: str, pool: list[PooledImage]) -> None:
    """Commit one planned shard: each image labeled with one map of ``pool``."""
    images, annotations = [], []
    for entry in run.read_manifest(shard_id):
        image_id = entry["image_id"]
        pooled = pool[image_id % len(pool)]
        file_name = entry["uri"].rsplit("/", 2)[-2] + "/" + entry["uri"].rsplit("/", 1)[-1]
        for label, mask in enumerate(pooled.masks):
            annotations.append({
                "id": annotation_id(image_id, label), "image_id": image_id, "category_id": 1,
                "category_name": "segment", "segmentation_counts": mask.counts,
                "segmentation_size": [mask.height, mask.width], "area": mask.area,
                "bbox": mask.bbox, "iscrowd": 0, "score": round(0.5 + (label % 50) / 100, 2),
                "file_name": file_name, "method": "diffseg", "model": "tiny",
                "embedding_set": None, "run_id": "synthetic",
            })
        images.append({
            "uri": entry["uri"], "image_id": image_id, "status": schema.IMAGE_STATUS_LABELED,
            "reason": None, "detail": None, "width": pooled.width, "height": pooled.height,
            "n_annotations": len(pooled.masks), "shard_id": shard_id, "file_name": file_name,
            "retryable": None,
        })
    records = commit_shard(run, shard_id, images, annotations)
    run.write_stats(shard_id, {
        "shard_id": shard_id, "images": len(images), "labeled": len(images), "failed": 0,
        "annotations": len(annotations), "failure_reasons": {}, "retryable_failures": 0,
        "parts": records, "seconds": 0.0,
    })
    run.mark_done(shard_id)
