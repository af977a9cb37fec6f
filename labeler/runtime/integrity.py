"""Checksummed shard parts: what a committed part must look like, and finding the ones that don't.

A worker commits a shard's parts and COCO fragments, then writes ``run/stats/<shard>.json`` with
each file's record (:func:`part_record`: sha256, bytes, rows, and the storage's stamp of the
written file: its ETag on object stores, its mtime on local disks); the driver writes the done
marker after that. So a done shard whose files are missing, differ from their recorded digest, or
disagree with the plan (image rows != the shard's planned images, annotation rows != the
annotations counted) was damaged after it was committed. :func:`shard_problem` says how; the
driver redoes such shards and never merges them, ``labeler status`` and ``labeler verify`` report
them.

How deep a check goes (:data:`SIZES`, :data:`STAMPS`, :data:`DIGESTS`): sizes and stamps cost
one metadata request per file and read nothing; digests read every byte. A stamp that changed
means the file was rewritten since its commit, so :data:`STAMPS` hashes exactly those files.
"""

from __future__ import annotations

import hashlib

from labeler.io.folders import Folder
from labeler.output import parts
from labeler.runtime.run_folder import RunFolder

#: The parts every shard commits, in commit order (images last: they say the shard is whole).
PART_NAMES = ("annotations.parquet", "images.parquet")
#: The shard's COCO fragments (checked when its stats record them: older runs have none).
FRAGMENT_NAMES = (parts.COCO_ANNOTATIONS_FRAGMENT, parts.COCO_IMAGES_FRAGMENT)
#: Check depths: sizes only; sizes, and digests of the files whose stamp changed; every digest.
SIZES, STAMPS, DIGESTS = "sizes", "stamps", "digests"
#: The metadata keys filesystems report a file's version under, most specific first.
_STAMP_KEYS = ("ETag", "etag", "generation", "mtime", "LastModified", "last_modified", "created")


def part_record(data: bytes, rows: int, stamp: str | None = None) -> dict:
    """What the stats record about one committed file: sha256, bytes, rows (and its stamp)."""
    record = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "rows": rows}
    if stamp is not None:
        record["stamp"] = stamp
    return record


def part_stamp(output: Folder, relative: str) -> str | None:
    """The storage's version stamp of one file (ETag, generation or mtime), or None."""
    return _stamp(output.fs.info(output.path(relative)))


def info_stamp(info: dict) -> str | None:
    """The version stamp in one file's metadata (a HEAD's or a listing's)."""
    return _stamp(info)


def _stamp(info: dict) -> str | None:
    for key in _STAMP_KEYS:
        if info.get(key) is not None:
            value = info[key]
            if key.lower() == "etag":  # a HEAD quotes it, an S3 listing (via s3fs) does not
                key, value = "ETag", str(value).strip('"')
            return f"{key}:{value}"
    return None


def file_sha256(output: Folder, relative: str) -> str:
    """The sha256 of one file of ``output``, read in chunks (memory stays bounded)."""
    with output.open(relative) as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def shard_problem(run: RunFolder, shard_id: str, n_images: int, digests: bool = True,
                  depth: str | None = None) -> str | None:
    """What is wrong with a done shard's committed parts, or None when they are sound.

    Args:
        run: the run folder.
        shard_id: a shard with a done marker.
        n_images: the shard's planned image count (``run/plan.json``).
        digests: hash every part (reads it whole); otherwise compare sizes only (one metadata
            call per part), which the driver does when it resumes and hashes before merging.
        depth: :data:`SIZES`, :data:`STAMPS` or :data:`DIGESTS`; overrides ``digests``.

    Returns:
        ``"part missing (...)"``, ``"part corrupt (...)"``, ``"parts inconsistent (...)"`` or
        ``"stats missing"``/``"stats unreadable"``; None when every part matches its record.
        Shards committed before digests were recorded (no ``parts`` in their stats) are only
        checked for presence.
    """
    try:
        stats = run.read_stats(shard_id)
    except (ValueError, UnicodeDecodeError):
        return "stats unreadable"
    return stats_problem(run, shard_id, n_images, stats,
                         depth or (DIGESTS if digests else SIZES))


def stats_problem(run: RunFolder, shard_id: str, n_images: int, stats: dict | None,
                  depth: str) -> str | None:
    """:func:`shard_problem` given the shard's stats, already read (None: missing)."""
    if stats is None:
        return "stats missing"
    records = stats.get("parts")
    for name in PART_NAMES + FRAGMENT_NAMES:
        record = None if records is None else records.get(name)
        if name in FRAGMENT_NAMES and record is None:
            continue  # committed before shards rendered their COCO records
        problem = _file_problem(run.output, run.shard_part(shard_id, name), records, record,
                                depth)
        if problem is not None:
            return problem
    if records is None:
        return None
    return _count_problem(stats, records, n_images)


def _file_problem(output: Folder, relative: str, records: dict | None, record: dict | None,
                  depth: str) -> str | None:
    try:
        info = output.fs.info(output.path(relative))
    except FileNotFoundError:
        return f"part missing ({relative})"
    if records is None:
        return None
    if record is None:
        return f"parts inconsistent (no digest recorded for {relative.rsplit('/', 1)[-1]})"
    if info.get("size") != record["bytes"]:
        return f"part corrupt ({relative}: {record['bytes']} bytes recorded, size differs)"
    hash_it = depth == DIGESTS or (depth == STAMPS and _stamp(info) != record.get("stamp"))
    if hash_it and file_sha256(output, relative) != record["sha256"]:
        return f"part corrupt ({relative}: sha256 differs from the one recorded)"
    return None


def _count_problem(stats: dict, records: dict, n_images: int) -> str | None:
    image_rows = records["images.parquet"]["rows"]
    annotation_rows = records["annotations.parquet"]["rows"]
    if image_rows != n_images or stats.get("images") != n_images:
        return (f"parts inconsistent ({image_rows} image rows recorded, the plan has "
                f"{n_images} images)")
    if annotation_rows != stats.get("annotations"):
        return (f"parts inconsistent ({annotation_rows} annotation rows, the stats count "
                f"{stats.get('annotations')})")
    fragments = {name: records[name]["rows"] for name in FRAGMENT_NAMES if name in records}
    if fragments.get(parts.COCO_ANNOTATIONS_FRAGMENT, annotation_rows) != annotation_rows or \
            fragments.get(parts.COCO_IMAGES_FRAGMENT, stats.get("labeled")) != stats.get("labeled"):
        return (f"parts inconsistent (COCO fragments of {fragments} records, the stats count "
                f"{stats.get('labeled')} labeled images, {annotation_rows} annotations)")
    return None


def damaged_shards(run: RunFolder, shards: list[dict], done: set[str],
                   digests: bool = True, depth: str | None = None) -> dict[str, str]:
    """Done shards of ``shards`` (plan entries) whose parts are not sound: shard id -> problem."""
    problems = {}
    for shard in shards:
        if shard["shard_id"] in done:
            problem = shard_problem(run, shard["shard_id"], shard["n_images"], digests, depth)
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
