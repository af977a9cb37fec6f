"""Checksummed shard parts: what a committed part must look like, and finding the ones that don't.

A worker commits a shard's parts, then writes ``run/stats/<shard>.json`` with each part's record
(:func:`part_record`: sha256, bytes, rows); the driver writes the done marker after that. So a
done shard whose parts are missing, differ from their recorded digest, or disagree with the plan
(image rows != the shard's planned images, annotation rows != the annotations counted) was damaged
after it was committed. :func:`shard_problem` says how; the driver redoes such shards and never
merges them, ``labeler status`` and ``labeler verify`` report them.
"""

from __future__ import annotations

import hashlib

from labeler.io.folders import Folder
from labeler.runtime.run_folder import RunFolder

#: The parts every shard commits, in commit order (images last: they say the shard is whole).
PART_NAMES = ("annotations.parquet", "images.parquet")


def part_record(data: bytes, rows: int) -> dict:
    """What the stats record about one committed part: ``{"sha256", "bytes", "rows"}``."""
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "rows": rows}


def file_sha256(output: Folder, relative: str) -> str:
    """The sha256 of one file of ``output``, read in chunks (memory stays bounded)."""
    with output.open(relative) as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def shard_problem(run: RunFolder, shard_id: str, n_images: int, digests: bool = True) -> str | None:
    """What is wrong with a done shard's committed parts, or None when they are sound.

    Args:
        run: the run folder.
        shard_id: a shard with a done marker.
        n_images: the shard's planned image count (``run/plan.json``).
        digests: hash every part (reads it whole); otherwise compare sizes only (one metadata
            call per part), which the driver does when it resumes and hashes before merging.

    Returns:
        ``"part missing (...)"``, ``"part corrupt (...)"``, ``"parts inconsistent (...)"`` or
        ``"stats missing"``/``"stats unreadable"``; None when every part matches its record.
        Shards committed before digests were recorded (no ``parts`` in their stats) are only
        checked for presence.
    """
    output = run.output
    try:
        stats = run.read_stats(shard_id)
    except (ValueError, UnicodeDecodeError):
        return "stats unreadable"
    if stats is None:
        return "stats missing"
    records = stats.get("parts")
    for name in PART_NAMES:
        relative = run.shard_part(shard_id, name)
        if not output.exists(relative):
            return f"part missing ({relative})"
        if records is None:
            continue
        record = records.get(name)
        if record is None:
            return f"parts inconsistent (no digest recorded for {name})"
        if output.fs.size(output.path(relative)) != record["bytes"]:
            return f"part corrupt ({relative}: {record['bytes']} bytes recorded, size differs)"
        if digests and file_sha256(output, relative) != record["sha256"]:
            return f"part corrupt ({relative}: sha256 differs from the one recorded)"
    if records is None:
        return None
    image_rows = records["images.parquet"]["rows"]
    annotation_rows = records["annotations.parquet"]["rows"]
    if image_rows != n_images or stats.get("images") != n_images:
        return (f"parts inconsistent ({image_rows} image rows recorded, the plan has "
                f"{n_images} images)")
    if annotation_rows != stats.get("annotations"):
        return (f"parts inconsistent ({annotation_rows} annotation rows, the stats count "
                f"{stats.get('annotations')})")
    return None


def damaged_shards(run: RunFolder, shards: list[dict], done: set[str],
                   digests: bool = True) -> dict[str, str]:
    """Done shards of ``shards`` (plan entries) whose parts are not sound: shard id -> problem."""
    problems = {}
    for shard in shards:
        if shard["shard_id"] in done:
            problem = shard_problem(run, shard["shard_id"], shard["n_images"], digests)
            if problem is not None:
                problems[shard["shard_id"]] = problem
    return problems


def retryable_failures(run: RunFolder, shard_id: str) -> int:
    """Failed images of a committed shard that may succeed on a re-run (0 without stats)."""
    try:
        stats = run.read_stats(shard_id)
    except (ValueError, UnicodeDecodeError):
        return 0
    return int((stats or {}).get("retryable_failures", 0))
