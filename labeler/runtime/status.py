"""``labeler status``: progress and failures of a run, read from its run folder alone.

Works while a run is going (the driver's heartbeat, ``run/progress.json``, gives its current
speed and ETA) and after it ended or was killed. Whether a driver is at work comes from the
output's lease (:mod:`labeler.runtime.lease`): a lease whose holder ran on this host and whose pid
is gone, or that the store last wrote too long ago, means the driver is gone (``interrupted``).
Every done shard's parts are checked against their records (:mod:`labeler.runtime.integrity`):
sizes and storage stamps, one metadata request per part, hashing only the parts rewritten since
their commit (``deep`` hashes every part); damaged ones are listed, and the run is not
``complete``; the merged files are checked against the merge's record
(:mod:`labeler.runtime.merge_record`). The cost follows the shards: a few metadata requests
each; the stats come from the run's roll-ups (:mod:`labeler.runtime.rollup`: one file per 1000
done shards, each shard's entry checked against its stats file's size and stamp), a shard's own
stats file only where no roll-up vouches for it (``deep`` reads every stats file).
"""

from __future__ import annotations

from labeler.errors import UserError
from labeler.io.folders import Folder
from labeler.output import parts
from labeler.output.coco_files import coco_files
from labeler.runtime.integrity import DIGESTS, STAMPS, stats_problem
from labeler.runtime.lease import inspect_lease, state_is_live
from labeler.runtime.merge_record import merge_damage, read_merge_record
from labeler.runtime.rollup import CommittedStats
from labeler.runtime.run_folder import RunFolder


def run_progress(output_uri: str, storage_options: dict | None = None,
                 deep: bool = False) -> dict:
    """Counts from the run folder: shards and images done of total, failures by reason, speed.

    ``state`` is one of ``planning``, ``running`` (a live driver holds the lease),
    ``interrupted`` (no live driver, shards left), ``damaged`` (committed parts no longer match
    their digests: ``damaged_shards``, or merged files no longer match the stamps the merge
    recorded: ``damaged_outputs``), ``failed`` (shards failed after their retries) or
    ``complete``.
    """
    output = Folder(output_uri, storage_options)
    run = RunFolder(output)
    if not output.exists("run/config.json"):
        raise UserError(f"{output_uri} holds no labeler run")
    lease = inspect_lease(output)
    driver_live = state_is_live(lease)
    if not run.has_plan():
        return {"state": "planning" if driver_live else "interrupted", "shards_total": None}
    plan = run.read_plan()
    done = run.done_shards()
    reasons: dict[str, int] = {}
    labeled = failed = annotations = 0
    seconds = 0.0
    images_done = 0
    damaged: dict[str, str] = {}
    depth = DIGESTS if deep else STAMPS
    committed = CommittedStats(run, use_rollups=not deep)
    for position, shard in enumerate(plan["shards"]):
        if shard["shard_id"] not in done:
            continue
        read, problem = _checked_stats(run, committed, shard, position, depth)
        if problem is not None:
            damaged[shard["shard_id"]] = problem
        stats = read or {}
        images_done += shard["n_images"]
        labeled += stats.get("labeled", 0)
        failed += stats.get("failed", 0)
        annotations += stats.get("annotations", 0)
        seconds += stats.get("seconds", 0.0)
        for reason, count in stats.get("failure_reasons", {}).items():
            reasons[reason] = reasons.get(reason, 0) + count
    failed_shards = run.failed_shards()
    heartbeat = run.read_progress() or {}
    merged = read_merge_record(output)
    damaged_outputs = merge_damage(output, merged) if merged is not None else {}
    complete = (coco_files(output, parts.COCO_JSON) is not None
                and len(done) == len(plan["shards"]) and not damaged and not damaged_outputs)
    return {
        "state": _state(driver_live, lease.exists, complete, damaged or damaged_outputs,
                        failed_shards),
        "damaged_shards": damaged,
        "damaged_outputs": damaged_outputs,
        "stalled_shards": run.stalled_shards(),
        "listing": run.read_listing(),
        "shards_total": len(plan["shards"]),
        "shards_done": len(done),
        "done_shard_ids": sorted(done),
        "shards_failed": sorted(failed_shards),
        "shard_errors": {shard: _last_line(f.get("error")) for shard, f in failed_shards.items()},
        "images_total": plan["n_images"],
        "images_done": images_done,
        "labeled": labeled,
        "failed": failed,
        "annotations": annotations,
        "failure_reasons": dict(sorted(reasons.items(), key=lambda item: -item[1])),
        "images_per_second_per_worker": images_done / seconds if seconds else None,
        "driver": heartbeat or None,
    }


def _checked_stats(run: RunFolder, committed: CommittedStats, shard: dict, position: int,
                   depth: str) -> tuple[dict | None, str | None]:
    """(stats, problem) of one done shard; a shard that looks damaged against its rolled-up
    stats is checked again against its own stats file (the roll-up may be older than it)."""
    shard_id = shard["shard_id"]
    try:
        read, rolled = committed.stats(shard_id, position)
        problem = stats_problem(run, shard_id, shard["n_images"], read, depth)
        if problem is not None and rolled:
            read = run.read_stats(shard_id)
            problem = stats_problem(run, shard_id, shard["n_images"], read, depth)
    except (ValueError, UnicodeDecodeError):
        return None, "stats unreadable"
    return read, problem


def done_shard_totals(run: RunFolder, shards: list[dict], done: set[str]) -> dict:
    """What the done shards hold, from their stats (rolled up where they can be): ``images``,
    ``labeled``, ``failed``, ``annotations``, ``seconds`` (worker time),
    ``retryable_failures`` and ``failure_reasons`` (most frequent first)."""
    totals = {"images": 0, "labeled": 0, "failed": 0, "annotations": 0, "seconds": 0.0,
              "retryable_failures": 0}
    reasons: dict[str, int] = {}
    committed = CommittedStats(run)
    for position, shard in enumerate(shards):
        if shard["shard_id"] not in done:
            continue
        stats = committed.stats(shard["shard_id"], position)[0] or {}
        totals["images"] += shard["n_images"]
        for key in ("labeled", "failed", "annotations", "seconds", "retryable_failures"):
            totals[key] += stats.get(key, 0)
        for reason, count in stats.get("failure_reasons", {}).items():
            reasons[reason] = reasons.get(reason, 0) + count
    totals["failure_reasons"] = dict(sorted(reasons.items(), key=lambda item: -item[1]))
    return totals


def _state(driver_live: bool, leased: bool, complete: bool, damaged: dict,
           failed_shards: dict) -> str:
    if driver_live:
        return "running"
    if leased:  # the driver died holding the lease: whatever it was doing is unfinished
        return "interrupted"
    if complete:
        return "complete"
    if damaged:
        return "damaged"
    if failed_shards:
        return "failed"
    return "interrupted"


def _last_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[-1] if lines else "?"


def describe_run(output_uri: str, storage_options: dict | None = None, deep: bool = False) -> str:
    """A short human-readable report of :func:`run_progress`."""
    progress = run_progress(output_uri, storage_options, deep)
    if progress["shards_total"] is None:
        if progress["state"] == "planning":
            return f"{output_uri}: planning (listing inputs)"
        return f"{output_uri}: interrupted while planning: re-run the same command"
    lines = [
        f"{output_uri}: {progress['state']}",
        (
            f"  shards  {progress['shards_done']}/{progress['shards_total']} done"
            + (f", {len(progress['shards_failed'])} failed" if progress["shards_failed"] else "")
        ),
        (
            f"  images  {progress['images_done']}/{progress['images_total']} done: "
            f"{progress['labeled']} labeled, {progress['failed']} failed"
        ),
        f"  annotations  {progress['annotations']}",
    ]
    driver = progress["driver"] or {}
    if progress["state"] == "running" and driver.get("images_per_second"):
        eta = driver.get("eta_seconds")
        lines.append(
            f"  speed  {driver['images_per_second']:.2f} images/s with "
            f"{driver.get('workers_ready', '?')}/{driver.get('workers', '?')} workers ready"
            + (f", ETA {_duration(eta)}" if eta is not None else "")
        )
    if progress["images_per_second_per_worker"]:
        lines.append(f"  throughput  {progress['images_per_second_per_worker']:.2f} images/s per worker")
    listing = progress["listing"]
    if listing.get("hidden_skipped"):
        lines.append(f"  skipped  {listing['hidden_skipped']} hidden files or folders in the input "
                     f"(names starting with '.', e.g. {', '.join(listing['hidden_examples'])})")
    for reason, count in progress["failure_reasons"].items():
        lines.append(f"  failed: {reason}  {count}")
    for shard_id, error in progress["shard_errors"].items():
        lines.append(f"  failed shard {shard_id}: {error} (run/failed/{shard_id}.json, "
                     f"run/logs/{shard_id}.log)")
    for shard_id, problem in progress["damaged_shards"].items():
        lines.append(f"  damaged shard {shard_id}: {problem}")
    for shard_id, stall in progress["stalled_shards"].items():
        lines.append(f"  stalled shard {shard_id}: its worker showed no sign of life for "
                     f"{stall['seconds']:.0f} s (--stall-timeout {stall['stall_timeout']:g}); "
                     "killed and replaced, the shard requeued"
                     + (", then done" if shard_id in progress["done_shard_ids"] else ""))
    for relative, problem in progress["damaged_outputs"].items():
        lines.append(f"  damaged output {relative}: {problem} (re-running merges it again)")
    if progress["state"] in ("interrupted", "damaged"):
        lines.append("  no driver is running: re-run the same command to resume")
    elif progress["state"] == "failed":
        lines.append("  re-run the same command to retry the failed shards")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"
