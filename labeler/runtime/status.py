"""``labeler status``: progress and failures of a run, read from its run folder alone."""

from __future__ import annotations

from labeler.io.storage import Folder
from labeler.runtime.run_folder import RunFolder


def run_progress(output_uri: str, storage_options: dict | None = None) -> dict:
    """Counts from the run folder: shards and images done of total, failures by reason, speed."""
    output = Folder(output_uri, storage_options)
    run = RunFolder(output)
    if not output.exists("run/config.json"):
        raise ValueError(f"{output_uri} holds no labeler run")
    if not run.has_plan():
        return {"state": "planning", "shards_total": None}
    plan = run.read_plan()
    done = run.done_shards()
    reasons: dict[str, int] = {}
    labeled = failed = annotations = 0
    seconds = 0.0
    images_done = 0
    for shard in plan["shards"]:
        if shard["shard_id"] not in done:
            continue
        stats = run.read_stats(shard["shard_id"]) or {}
        images_done += shard["n_images"]
        labeled += stats.get("labeled", 0)
        failed += stats.get("failed", 0)
        annotations += stats.get("annotations", 0)
        seconds += stats.get("seconds", 0.0)
        for reason, count in stats.get("failure_reasons", {}).items():
            reasons[reason] = reasons.get(reason, 0) + count
    failed_shards = run.failed_shards()
    complete = output.exists("coco.json") and len(done) == len(plan["shards"])
    return {
        "state": "complete" if complete else ("failed" if failed_shards else "running"),
        "shards_total": len(plan["shards"]),
        "shards_done": len(done),
        "shards_failed": sorted(failed_shards),
        "images_total": plan["n_images"],
        "images_done": images_done,
        "labeled": labeled,
        "failed": failed,
        "annotations": annotations,
        "failure_reasons": dict(sorted(reasons.items(), key=lambda item: -item[1])),
        "images_per_second_per_worker": images_done / seconds if seconds else None,
    }


def describe_run(output_uri: str, storage_options: dict | None = None) -> str:
    """A short human-readable report of :func:`run_progress`."""
    progress = run_progress(output_uri, storage_options)
    if progress["shards_total"] is None:
        return f"{output_uri}: planning (listing inputs)"
    lines = [
        f"{output_uri}: {progress['state']}",
        f"  shards  {progress['shards_done']}/{progress['shards_total']} done"
        + (f", {len(progress['shards_failed'])} failed" if progress["shards_failed"] else ""),
        f"  images  {progress['images_done']}/{progress['images_total']} done: "
        f"{progress['labeled']} labeled, {progress['failed']} failed",
        f"  annotations  {progress['annotations']}",
    ]
    if progress["images_per_second_per_worker"]:
        lines.append(f"  throughput  {progress['images_per_second_per_worker']:.2f} images/s per worker")
    for reason, count in progress["failure_reasons"].items():
        lines.append(f"  failed: {reason}  {count}")
    for shard_id in progress["shards_failed"]:
        lines.append(f"  failed shard {shard_id}: see run/failed/{shard_id}.json")
    return "\n".join(lines)
