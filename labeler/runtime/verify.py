"""``labeler verify OUTPUT``: check a finished output end to end, without rewriting anything.

The work is split by shard and runs in parallel processes, each holding one shard at a time, so
memory is bounded by one shard whatever the collection size. Checks (each problem is one line of
the report):

- the run is finished: every planned shard is done, none is recorded as failed;
- every shard's committed parts and COCO fragments match the sha256 and row counts recorded in
  its stats (:mod:`labeler.runtime.integrity`), and each merged ``annotations/`` part is a copy
  of its shard's part (no file there that the plan does not name);
- ``images.parquet`` holds the planned images (the shard manifests), in plan order, once each,
  each row equal to its shard's committed one;
- every annotation's RLE is checked from its run lengths, without building the mask
  (:func:`labeler.output.rle.decode_counts`): well formed, runs summing to H * W, foreground
  equal to the recorded ``area``, box of the runs equal to the recorded ``bbox``; ``sample``
  annotations (spread over the shards) are also fully decoded;
- the COCO files (``coco.json``, or ``coco/index.json`` and its parts) hold, record by record
  and in order, the labeled images and the annotations of the parts, with the run's ``info`` and
  categories; a file is read line by line (one record per line), never loaded whole;
- with ``inputs``, the input as it is now: the images whose identity (:mod:`labeler.io.identity`)
  differs from the one recorded when they were read, the images no longer listed, and the images
  listed that the output does not hold. This lists the input and looks at every entry the listing
  gives no identity (a HEAD or stat each, or its bytes).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import tempfile
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow.parquet as pq

from labeler.errors import UserError
from labeler.io.folders import Folder
from labeler.io.listing import iter_inputs
from labeler.io.reading import with_identities
from labeler.io.uris import InputError, redact_uri
from labeler.output import parts, schema
from labeler.output.coco_files import (
    BETWEEN,
    COCO_DIR,
    COCO_INDEX,
    concatenated,
    file_footer,
    file_header,
)
from labeler.output.coco_records import shard_fragments
from labeler.output.rle import CountsError, decode_counts, decode_mask, runs_summary
from labeler.runtime.integrity import file_sha256, shard_problem
from labeler.runtime.listing_diff import diff_listing
from labeler.runtime.plan import planned_images
from labeler.runtime.run_folder import RunFolder

#: Problems listed per check before the rest are counted only.
MAX_LISTED = 20
#: Shards per verifying process at least (fewer shards: fewer processes; starting one costs
#: about a second).
SHARDS_PER_PROCESS = 16
#: Image ids read from ``images.parquet`` per batch.
_BATCH = 65536


@dataclass(frozen=True)
class _Target:
    """What a verifying process needs to open the output."""

    uri: str
    storage_options: dict | None


@dataclass
class _ShardResult:
    integrity: str | None = None
    problems: list[str] = field(default_factory=list)


def verify_output(output_uri: str, storage_options: dict | None = None, sample: int = 0,
                  processes: int | None = None, inputs: bool = False) -> list[str]:
    """The problems of a finished output (empty when it is sound).

    Args:
        output_uri: the run's output folder.
        storage_options: fsspec options for it (and for the input, with ``inputs``).
        sample: about this many annotations, spread over the shards, are fully decoded too.
        processes: verifying processes (default: one per CPU).
        inputs: also compare the input as it is now with what was labeled.

    Raises:
        UserError: ``output_uri`` holds no labeler run.
    """
    output = Folder(output_uri, storage_options)
    run = RunFolder(output)
    if not output.exists("run/config.json") or not run.has_plan():
        raise UserError(f"{output_uri} holds no planned labeler run")
    shards = run.read_plan()["shards"]
    done = run.done_shards()
    problems = [f"shard {shard['shard_id']}: not done (re-run the command to finish the run)"
                for shard in shards if shard["shard_id"] not in done]
    problems += [f"shard {shard_id}: failed after its retries"
                 for shard_id in sorted(run.failed_shards())]
    if problems:
        return problems
    target = _Target(output_uri, storage_options)
    per_shard = math.ceil(sample / len(shards)) if sample and shards else 0
    workers = processes or min(os.cpu_count() or 1, max(1, len(shards) // SHARDS_PER_PROCESS))
    with _pool(workers) as pool:
        chunks = _chunks(list(enumerate(shards)), workers)
        images = pool.submit(_check_images, target, shards)
        results = [r for chunk in pool.map(_check_shards, [target] * len(chunks), chunks,
                                           [per_shard] * len(chunks)) for r in chunk]
        integrity = [r.integrity for r in results if r.integrity is not None]
        if integrity:  # the merged outputs are only meaningful over a sound, finished run
            images.cancel()
            return integrity
        problems += _stray_merged_parts(output, shards)
        problems += _capped([p for r in results for p in r.problems])
        problems += images.result()
        files, file_problems = _coco_layout(output, len(shards))
        problems += file_problems
        for found in pool.map(_check_coco_file, [target] * len(files), [f for f, _, _ in files],
                              [shards[start:stop] for _, start, stop in files]):
            problems += found
    if inputs:
        problems += _check_inputs(run, storage_options)
    return problems


# -- the input as it is now ---------------------------------------------------------------------
def _check_inputs(run: RunFolder, storage_options: dict | None) -> list[str]:
    """The images whose input changed, went away or came since the run read it."""
    input_uri = run.output.read_json("run/config.json")["settings"]["input"]
    plan = run.read_plan()
    shard_ids = [shard["shard_id"] for shard in plan["shards"]]
    try:
        refs = with_identities(iter_inputs(input_uri, storage_options=storage_options),
                               storage_options=storage_options)
        items = ({"uri": ref.uri, "identity": ref.identity} for ref in refs)
        with tempfile.TemporaryDirectory(prefix="labeler-verify-") as workdir:
            diff = diff_listing(planned_images(run, shard_ids, set(shard_ids)), items,
                                plan["n_images"], workdir)
            new = sum(1 for _ in diff.new_items())
    except InputError as error:
        return [f"input {redact_uri(input_uri)}: cannot be listed ({error})"]
    problems = []
    if diff.changed:
        problems.append(f"input: {diff.changed} images changed since they were labeled "
                        f"(re-run the command to relabel them): {'; '.join(diff.changed_examples)}"
                        + ("; ..." if diff.changed > len(diff.changed_examples) else ""))
    if diff.removed:
        problems.append(f"input: {diff.removed} images of the output are no longer in the "
                        f"input: {', '.join(diff.removed_examples)}"
                        + (", ..." if diff.removed > len(diff.removed_examples) else ""))
    if new:
        problems.append(f"input: {new} images of the input are not in the output (re-run the "
                        "command to label them)")
    return problems


def _pool(workers: int) -> Executor:
    """Processes (spawned: the caller's threads, Ray's included, are not forked), or this
    process alone for one."""
    if workers <= 1:
        return ThreadPoolExecutor(1, thread_name_prefix="labeler-verify")
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


def _chunks(items: list, workers: int) -> list[list]:
    """About 8 chunks per process: few enough to keep the overhead low, enough to balance."""
    size = max(1, math.ceil(len(items) / (workers * 8)))
    return [items[start:start + size] for start in range(0, len(items), size)]


# -- per shard: parts, merged copy, RLE ---------------------------------------------------------
def _check_shards(target: _Target, positioned: list[tuple[int, dict]],
                  sample: int) -> list[_ShardResult]:
    run = RunFolder(Folder(target.uri, target.storage_options))
    return [_check_shard(run, position, shard, sample) for position, shard in positioned]


def _check_shard(run: RunFolder, position: int, shard: dict, sample: int) -> _ShardResult:
    shard_id = shard["shard_id"]
    problem = shard_problem(run, shard_id, shard["n_images"])
    if problem is not None:
        return _ShardResult(integrity=f"shard {shard_id}: {problem}")
    output = run.output
    result = _ShardResult()
    merged = parts.merged_annotation_part(position, shard_id)
    recorded = (run.read_stats(shard_id).get("parts") or {}).get(parts.ANNOTATIONS.file_name)
    if not output.exists(merged):
        result.problems.append(f"{merged}: missing")
    elif recorded is not None and file_sha256(output, merged) != recorded["sha256"]:
        result.problems.append(f"{merged}: differs from shard {shard_id}'s committed part")
    with output.open(run.shard_part(shard_id, parts.ANNOTATIONS.file_name)) as handle:
        table = pq.read_table(handle, schema=schema.ANNOTATIONS,
                              columns=["id", "segmentation_counts", "segmentation_size",
                                       "area", "bbox"])
    result.problems += _check_rle(table, shard_id)
    result.problems += _check_sample(table, shard_id, sample)
    return result


def _check_rle(table, shard_id: str) -> list[str]:
    """Check every RLE of one shard from its run lengths (no mask is built)."""
    if not table.num_rows:
        return []
    ids = table.column("id").to_numpy()
    strings = table.column("segmentation_counts").to_pylist()
    size = np.array(table.column("segmentation_size").to_pylist(), np.int64).reshape(-1, 2)
    try:
        counts, offsets = decode_counts(strings)
    except (CountsError, UnicodeEncodeError):
        return [_one_by_one(ids, strings, shard_id)]
    total, area, bbox = runs_summary(counts, offsets, size[:, 0])
    starts = offsets[:-1]
    negative = np.zeros(len(strings), bool)
    np.logical_or.at(negative, np.repeat(np.arange(len(strings)), np.diff(offsets)), counts < 0)
    recorded_area = table.column("area").to_numpy()
    recorded_bbox = np.array(table.column("bbox").to_pylist(), np.float64).reshape(-1, 4)
    problems = []
    for index in np.flatnonzero(negative | (total != size[:, 0] * size[:, 1]) | (starts < 0)):
        problems.append(f"annotation {ids[index]} (shard {shard_id}): invalid RLE (runs cover "
                        f"{total[index]} pixels of {size[index, 0]}x{size[index, 1]})")
    for index in np.flatnonzero(area != recorded_area):
        problems.append(f"annotation {ids[index]} (shard {shard_id}): RLE covers {area[index]} "
                        f"pixels, area says {recorded_area[index]}")
    for index in np.flatnonzero(np.any(bbox != recorded_bbox, axis=1)):
        problems.append(f"annotation {ids[index]} (shard {shard_id}): RLE box "
                        f"{bbox[index].tolist()}, bbox says {recorded_bbox[index].tolist()}")
    return problems


def _one_by_one(ids: np.ndarray, strings: list[str], shard_id: str) -> str:
    """The first malformed string of a shard whose strings do not decode together."""
    for annotation_id, text in zip(ids, strings, strict=True):
        try:
            decode_counts([text])
        except (CountsError, UnicodeEncodeError) as error:
            return f"annotation {annotation_id} (shard {shard_id}): invalid RLE ({error})"
    return f"shard {shard_id}: RLE strings do not decode"


def _check_sample(table, shard_id: str, sample: int) -> list[str]:
    """Fully decode ``sample`` annotations spread over the shard; compare area and box."""
    if not sample or not table.num_rows:
        return []
    problems = []
    for index in np.unique(np.linspace(0, table.num_rows - 1, min(sample, table.num_rows))
                           .astype(int)):
        row = table.slice(int(index), 1).to_pylist()[0]
        try:
            mask = decode_mask({"size": row["segmentation_size"],
                                "counts": row["segmentation_counts"]}).astype(bool)
        except Exception as error:  # noqa: BLE001 - pycocotools raises bare Exceptions
            problems.append(f"annotation {row['id']} (shard {shard_id}): invalid RLE ({error})")
            continue
        if int(mask.sum()) != row["area"]:
            problems.append(f"annotation {row['id']} (shard {shard_id}): decoded mask covers "
                            f"{int(mask.sum())} pixels, area says {row['area']}")
    return problems


def _stray_merged_parts(output: Folder, shards: list[dict]) -> list[str]:
    wanted = {parts.merged_annotation_part(i, s["shard_id"]).rsplit("/", 1)[1]
              for i, s in enumerate(shards)}
    return [f"{parts.MERGED_ANNOTATIONS_DIR}/{name}: not a part of the plan"
            for name in sorted(set(output.list(parts.MERGED_ANNOTATIONS_DIR)) - wanted)]


# -- images.parquet against the manifests --------------------------------------------------------
def _check_images(target: _Target, shards: list[dict]) -> list[str]:
    """Stream ``images.parquet`` against the manifests and the image parts (plan order)."""
    output = Folder(target.uri, target.storage_options)
    planned = _planned_rows(RunFolder(output), shards)
    try:
        handle = output.open(parts.MERGED_IMAGES)
    except FileNotFoundError:
        return [f"{parts.MERGED_IMAGES}: missing"]
    unplanned = differing = 0
    first = None
    with handle:
        try:
            for row in _merged_rows(handle):
                expected = next(planned, None)
                if expected is None or expected[0] != row["image_id"]:
                    unplanned += 1
                elif expected[1] != row:
                    differing += 1
                first = row["image_id"] if first is None and (unplanned or differing) else first
        except Exception as error:  # noqa: BLE001 - any reader error means the file is unreadable
            return [f"{parts.MERGED_IMAGES}: unreadable ({type(error).__name__}: {error})"]
    missing = sum(1 for _ in planned)
    problems = []
    if missing:
        problems.append(f"{parts.MERGED_IMAGES}: {missing} planned images missing")
    if unplanned:
        problems.append(f"{parts.MERGED_IMAGES}: {unplanned} rows not planned, repeated or out "
                        f"of plan order (first at image {first})")
    if differing:
        problems.append(f"{parts.MERGED_IMAGES}: {differing} rows differ from their shard's "
                        f"committed part (first at image {first})")
    return problems


def _planned_rows(run: RunFolder, shards: list[dict]) -> Iterator[tuple[int, dict | None]]:
    """(planned image id, its committed image row), in plan order, one shard at a time."""
    for shard in shards:
        shard_id = shard["shard_id"]
        rows = parts.read_part(run.output, parts.shard_part(shard_id, parts.IMAGES),
                               parts.IMAGES).to_pylist()
        by_id = {row["image_id"]: row for row in rows}
        for entry in run.read_manifest(shard_id):
            yield entry["image_id"], by_id.get(entry["image_id"])


def _merged_rows(handle) -> Iterator[dict]:
    for batch in pq.ParquetFile(handle).iter_batches(batch_size=_BATCH):
        yield from batch.to_pylist()


# -- COCO files, record by record ---------------------------------------------------------------
def _coco_layout(output: Folder, n_shards: int) -> tuple[list[tuple[str, int, int]], list[str]]:
    """The COCO files with the plan positions of the shards each holds."""
    if output.exists(COCO_INDEX):
        try:
            entries = output.read_json(COCO_INDEX)["files"]
            files = [(f"{COCO_DIR}/{e['file']}", *e["shards"]) for e in entries]
        except (ValueError, KeyError, TypeError) as error:
            return [], [f"{COCO_INDEX}: unreadable ({type(error).__name__}: {error})"]
        covered = [position for _, start, stop in files for position in range(start, stop)]
        if covered != list(range(n_shards)):
            return files, [f"{COCO_INDEX}: its files do not hold the plan's shards in order"]
        return files, []
    if output.exists(parts.COCO_JSON):
        return [(parts.COCO_JSON, 0, n_shards)], []
    return [], [f"{parts.COCO_JSON}: missing"]


def _check_coco_file(target: _Target, relative: str, shards: list[dict]) -> list[str]:
    """Compare one COCO file, line by line (a record per line), with the parts' records."""
    output = Folder(target.uri, target.storage_options)
    if not output.exists(relative):
        return [f"{relative}: missing"]
    meta = output.read_json(parts.OUTPUT_META)
    expected = _lines(_expected_bytes(output, shards, meta))
    mismatched = {"header": 0, "images": 0, "annotations": 0}
    section, found_lines, expected_lines = "header", 0, 0
    with output.open(relative) as handle:
        for found in handle:
            found_lines += 1
            wanted = next(expected, None)
            if wanted is None:
                continue
            expected_lines += 1
            if wanted.startswith(b'"images": ['):
                section = "images"
            elif wanted.startswith(BETWEEN[3:]):
                section = "annotations"
            elif wanted.startswith(b'"categories"'):
                section = "header"
            if found.rstrip(b"\n") != wanted:
                mismatched[section] += 1
    expected_lines += sum(1 for _ in expected)
    problems = []
    if mismatched["annotations"]:
        problems.append(f"{relative}: {mismatched['annotations']} annotations do not match any "
                        "part row")
    if mismatched["images"]:
        problems.append(f"{relative}: {mismatched['images']} images differ from the labeled "
                        "images of images.parquet")
    if mismatched["header"]:
        problems.append(f"{relative}: info or categories differ from the run's")
    if found_lines != expected_lines:
        problems.append(f"{relative}: {found_lines} lines, the parts make {expected_lines} (records "
                        "missing or added)")
    return problems


def _expected_bytes(output: Folder, shards: list[dict], meta: dict) -> Iterator[bytes]:
    """The file the merge writes for ``shards``, rendered again from their Parquet parts."""
    yield file_header(meta["info"])
    yield from concatenated(_rendered(output, shards, images=True))
    yield BETWEEN
    yield from concatenated(_rendered(output, shards, images=False))
    yield file_footer(meta["categories"])


def _rendered(output: Folder, shards: list[dict], images: bool) -> Iterator[bytes]:
    for shard in shards:
        shard_id = shard["shard_id"]
        if images:
            rows = parts.read_part(output, parts.shard_part(shard_id, parts.IMAGES),
                                   parts.IMAGES).to_pylist()
            yield shard_fragments(rows, [])[0]
        else:
            rows = parts.read_part(output, parts.shard_part(shard_id, parts.ANNOTATIONS),
                                   parts.ANNOTATIONS).to_pylist()
            yield shard_fragments([], rows)[2]


def _lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The lines (without their newline) of a stream of byte chunks."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        yield from complete
    if pending:
        yield pending


def _capped(problems: list[str]) -> list[str]:
    if len(problems) <= MAX_LISTED:
        return problems
    return problems[:MAX_LISTED] + [f"... and {len(problems) - MAX_LISTED} more"]
