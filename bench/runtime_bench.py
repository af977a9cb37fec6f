"""What the runtime costs: planning and bookkeeping at 1M images, merging, pipeline overhead.

Three measurements, each in a fresh child process so its peak RSS is its own:

* ``plan``: plan a ``--images`` line text manifest on local disk (the driver's listing, sharding
  and manifest writing), then the driver's per-shard bookkeeping for every shard (completion
  marker + stats), the resume computation (plan + done markers -> pending) and ``labeler status``.
* ``merge``: merge ``--shards`` synthetic shard parts (``--images-per-shard`` images with
  ``--annotations-per-image`` real RLE masks each) into ``coco.json``, ``annotations/`` and
  ``images.parquet``.
* ``e2e``: ``labeler run`` (local Ray, one worker) on ``--e2e-images`` photos against the bare
  ``DiffSeg.label`` loop on the same decoded images, same model, batch size and thread count
  (one, as a one-CPU worker has). The ratio is the share of the method's speed the pipeline keeps.
  On a shared machine that ratio drifts with the neighbours' load, so the worker's own accounting
  is reported too: the share of its span spent inside the model (``model_busy_fraction``), the
  per-image time it spends in the shard outside the model, and its idle time between shards.

    python bench/runtime_bench.py all
    python bench/runtime_bench.py plan --images 1000000
    python bench/runtime_bench.py merge --shards 1000 --images-per-shard 128
    python bench/runtime_bench.py e2e --e2e-images 16 --model tiny

Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "labeler" / "data" / "samples"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------------------------
# Planning and bookkeeping
# --------------------------------------------------------------------------------------------


def child_plan(work: Path, images: int, shard_size: int) -> dict:
    from labeler.config import JobConfig
    from labeler.io.folders import Folder
    from labeler.runtime.job import input_items
    from labeler.runtime.plan import plan_run
    from labeler.runtime.run_folder import RunFolder
    from labeler.runtime.scheduler import ShardScheduler
    from labeler.runtime.status import run_progress

    manifest = work / "manifest.txt"
    with manifest.open("w") as handle:
        for index in range(images):
            handle.write(f"photos/{index // 1000:04d}/img_{index:07d}.jpg\n")
    config = JobConfig(input=str(manifest), output=str(work / "out"), model="tiny",
                       shard_size=shard_size)
    run = RunFolder(Folder(config.output))
    figures: dict = {"images": images, "shard_size": shard_size}

    started = time.perf_counter()
    run.claim(config)
    plan = plan_run(run, input_items(config), config.shard_size)
    figures["plan_s"] = time.perf_counter() - started
    figures["shards"] = len(plan["shards"])
    figures["plan_peak_rss_mib"] = peak_rss_mib()

    started = time.perf_counter()
    scheduler = ShardScheduler([shard["shard_id"] for shard in plan["shards"]])
    while scheduler.has_pending():
        shard_id = scheduler.take()
        run.write_stats(shard_id, {"shard_id": shard_id, "images": shard_size,
                                   "labeled": shard_size, "failed": 0, "annotations": 0,
                                   "failure_reasons": {}, "seconds": 1.0})
        run.mark_done(shard_id)
        scheduler.succeeded(shard_id)
    figures["bookkeeping_s"] = time.perf_counter() - started
    figures["bookkeeping_ms_per_shard"] = 1000 * figures["bookkeeping_s"] / len(plan["shards"])

    started = time.perf_counter()
    plan = run.read_plan()
    done = run.done_shards()
    pending = [shard for shard in plan["shards"] if shard["shard_id"] not in done]
    figures["resume_scan_s"] = time.perf_counter() - started
    assert not pending

    started = time.perf_counter()
    progress = run_progress(config.output)
    figures["status_s"] = time.perf_counter() - started
    assert progress["images_done"] == images
    figures["peak_rss_mib"] = peak_rss_mib()
    return figures


# --------------------------------------------------------------------------------------------
# Merge
# --------------------------------------------------------------------------------------------


def _mask_pool(count: int, height: int, width: int) -> list[tuple[str, int, list[float]]]:
    """Real compressed-RLE masks (blobs) with their areas and boxes."""
    import numpy as np

    from labeler.output.rle import encode_label_map

    rng = np.random.default_rng(0)
    pool = []
    while len(pool) < count:
        centres = rng.integers(0, [height, width], size=(8, 2))
        y, x = np.mgrid[0:height, 0:width]
        distance = np.stack([(y - cy) ** 2 + (x - cx) ** 2 for cy, cx in centres])
        label_map = distance.argmin(0).astype(np.int32)
        for mask in encode_label_map(label_map, 8):
            if mask.area:
                pool.append((mask.counts, mask.area, mask.bbox))
    return pool[:count]


def child_merge_parts(work: Path, shards: int, per_shard: int, per_image: int) -> dict:
    """Write the synthetic shard parts (in its own process, so the merge's RSS is its own)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from labeler.io.folders import Folder
    from labeler.output import schema

    output = Folder(str(work / "out"))
    pool = _mask_pool(256, 384, 512)
    shard_ids = [f"{index:016x}" for index in range(shards)]
    started = time.perf_counter()
    for number, shard_id in enumerate(shard_ids):
        images, annotations = [], []
        for offset in range(per_shard):
            image_id = number * per_shard + offset + 1
            images.append({"uri": f"s3://bucket/photos/img_{image_id:08d}.jpg",
                           "image_id": image_id, "status": "labeled", "reason": None,
                           "detail": None, "width": 512, "height": 384,
                           "n_annotations": per_image, "shard_id": shard_id})
            for label in range(per_image):
                counts, area, bbox = pool[(image_id * 7 + label) % len(pool)]
                annotations.append({
                    "id": image_id * 4096 + label, "image_id": image_id, "category_id": 1,
                    "category_name": "segment", "segmentation_counts": counts,
                    "segmentation_size": [384, 512], "area": area, "bbox": bbox, "iscrowd": 0,
                    "score": 0.5, "file_name": images[-1]["uri"], "method": "diffseg",
                    "model": "tiny", "resource_digest": None, "run_id": "bench",
                })
        for name, table_schema, rows in (("images.parquet", schema.IMAGES, images),
                                         ("annotations.parquet", schema.ANNOTATIONS, annotations)):
            buffer = io.BytesIO()
            pq.write_table(pa.Table.from_pylist(rows, schema=table_schema), buffer)
            output.write_bytes(f"run/shards/{shard_id}/{name}", buffer.getvalue())
    (work / "shard_ids.json").write_text(json.dumps(shard_ids))
    return {"prepare_s": time.perf_counter() - started}


def child_merge(work: Path) -> dict:
    from labeler.io.folders import Folder
    from labeler.output.merge import merge_outputs

    shard_ids = json.loads((work / "shard_ids.json").read_text())
    rss_before = peak_rss_mib()
    started = time.perf_counter()
    counts = merge_outputs(Folder(str(work / "out")), shard_ids, [{"id": 1, "name": "segment"}],
                           {"bench": True})
    seconds = time.perf_counter() - started
    return {
        "shards": len(shard_ids), "images": counts["images"],
        "annotations": counts["annotations"],
        "coco_json_mib": (work / "out" / "coco.json").stat().st_size / 2**20,
        "merge_s": seconds, "annotations_per_s": counts["annotations"] / seconds,
        "rss_mib_after_imports": rss_before, "peak_rss_mib": peak_rss_mib(),
    }


# --------------------------------------------------------------------------------------------
# End to end against the bare method
# --------------------------------------------------------------------------------------------


def _photos(folder: Path, count: int) -> list[Path]:
    files = sorted(f for f in SAMPLES.iterdir() if f.suffix.lower() in {".jpg", ".png", ".webp"})
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        source = files[index % len(files)]
        path = folder / f"{index:04d}{source.suffix}"
        shutil.copyfile(source, path)
        paths.append(path)
    return paths


def child_bare(work: Path, count: int, model: str, batch_size: int, kl: float) -> dict:
    import torch

    torch.set_num_threads(1)  # what a one-CPU Ray worker gets
    from labeler.config import JobConfig
    from labeler.io.decode import decode_image
    from labeler.methods.diffseg.algorithm import DiffSegOptions

    config = JobConfig(input="-", output="-", model=model, batch_size=batch_size,
                       settings=DiffSegOptions(kl_threshold=kl))
    segmenter = config.build_segmenter()
    images = [decode_image(path.read_bytes()).pixels for path in _photos(work / "photos", count)]
    segmenter.label(images[:batch_size])  # warm-up
    started = time.perf_counter()
    for start in range(0, count, batch_size):
        segmenter.label(images[start : start + batch_size])
    seconds = time.perf_counter() - started
    return {"bare_s": seconds, "bare_images_per_s": count / seconds,
            "torch_threads": torch.get_num_threads()}


def run_e2e(work: Path, count: int, model: str, batch_size: int, shard_size: int, kl: float) -> dict:
    """The pipeline between two bare runs (this shared machine's speed drifts by ~10%)."""
    before = run_child("bare", work, count, model, batch_size, kl)
    photos = work / "photos"
    if not photos.exists():
        _photos(photos, count)
    job = work / "job.toml"
    job.write_text(f"[diffseg]\nkl_threshold = {kl}\n")
    command = [sys.executable, "-m", "labeler.cli", "run", str(job), "--input", str(photos),
               "--output", str(work / "out"), "--model", model, "--workers", "1",
               "--batch-size", str(batch_size), "--shard-size", str(shard_size), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    stats = [json.loads(p.read_text()) for p in (work / "out" / "run" / "stats").glob("*.json")]
    first = min(s["started_at"] for s in stats)
    last = max(s["finished_at"] for s in stats)
    steady = count / (last - first)
    wait_input = sum(s["timings"]["wait_input"] for s in stats)
    # Robust to a noisy machine: the share of the worker's span spent inside the model.
    labeling = sum(s["timings"]["label"] for s in stats)
    in_shards = sum(s["seconds"] for s in stats)
    after = run_child("bare", work, count, model, batch_size, kl)
    bare = {"bare_images_per_s": (before["bare_images_per_s"] + after["bare_images_per_s"]) / 2,
            "bare_images_per_s_before": before["bare_images_per_s"],
            "bare_images_per_s_after": after["bare_images_per_s"],
            "torch_threads": before["torch_threads"]}
    return {
        **bare, "images": count, "batch_size": batch_size, "shard_size": shard_size,
        "pipeline_wall_s": wall, "pipeline_images_per_s_wall": count / wall,
        "pipeline_images_per_s_steady": steady,
        "ratio_steady": steady / bare["bare_images_per_s"],
        "ratio_wall": (count / wall) / bare["bare_images_per_s"],
        "worker_wait_for_input_s": wait_input,
        "model_busy_fraction": labeling / (last - first),
        "runtime_in_shard_s_per_image": (in_shards - labeling) / count,
        "idle_between_shards_s": (last - first) - in_shards,
    }


# --------------------------------------------------------------------------------------------


def run_child(kind: str, work: Path, *args) -> dict:
    command = [sys.executable, __file__, "--child", kind, "--work", str(work),
               "--child-args", json.dumps(args)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if kind == "bare":
        env["OMP_NUM_THREADS"] = "1"  # as Ray sets it for a one-CPU worker
    done = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


CHILDREN = {"plan": child_plan, "merge_parts": child_merge_parts, "merge": child_merge,
            "bare": child_bare}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="?", choices=["all", "plan", "merge", "e2e"], default="all")
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--shard-size", type=int, default=256)
    parser.add_argument("--shards", type=int, default=1000)
    parser.add_argument("--images-per-shard", type=int, default=128)
    parser.add_argument("--annotations-per-image", type=int, default=8)
    parser.add_argument("--e2e-images", type=int, default=16)
    parser.add_argument("--e2e-batch-size", type=int, default=2)
    parser.add_argument("--e2e-shard-size", type=int, default=8)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--kl-threshold", type=float, default=0.7)
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--child-args", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = CHILDREN[args.child](Path(args.work), *json.loads(args.child_args))
        sys.stdout.write(json.dumps(result) + "\n")
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    kinds = ["plan", "merge", "e2e"] if args.what == "all" else [args.what]
    for kind in kinds:
        with tempfile.TemporaryDirectory(prefix=f"labeler-bench-{kind}-") as work:
            if kind == "plan":
                result = run_child("plan", Path(work), args.images, args.shard_size)
            elif kind == "merge":
                run_child("merge_parts", Path(work), args.shards, args.images_per_shard,
                          args.annotations_per_image)
                result = run_child("merge", Path(work))
            else:
                result = run_e2e(Path(work), args.e2e_images, args.model, args.e2e_batch_size,
                                 args.e2e_shard_size, args.kl_threshold)
        sys.stdout.write(json.dumps({"benchmark": kind, **result}) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
