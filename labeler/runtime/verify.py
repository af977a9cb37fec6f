"""``labeler verify OUTPUT``: check a finished output end to end, without rewriting anything.

Checks, in order (each problem is one line of the report):

- the run is finished: every planned shard is done, none is recorded as failed;
- every shard's committed parts match the sha256 and row counts recorded in its stats
  (:mod:`labeler.runtime.integrity`), and each merged ``annotations/`` part is a byte copy of its
  shard's part (no file there that the plan does not name);
- ``images.parquet`` is readable and holds every planned image (the shard manifests) exactly once;
- every annotation row's RLE decodes with pycocotools and covers its recorded ``area``;
- ``coco.json`` parses and holds exactly the labeled images (id, width, height) and the
  annotations of the parts, record for record, with the run's categories.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator

import pyarrow.parquet as pq
from pycocotools import mask as mask_util

from labeler.errors import UserError
from labeler.io.folders import Folder
from labeler.output import schema
from labeler.output.merge import coco_annotation
from labeler.runtime.integrity import file_sha256, shard_problem
from labeler.runtime.run_folder import RunFolder

#: Problems listed per check before the rest are counted only.
MAX_LISTED = 20


def verify_output(output_uri: str, storage_options: dict | None = None) -> list[str]:
    """The problems of a finished output (empty when it is sound).

    Raises:
        ValueError: ``output_uri`` holds no labeler run.
    """
    output = Folder(output_uri, storage_options)
    run = RunFolder(output)
    if not output.exists("run/config.json") or not run.has_plan():
        raise UserError(f"{output_uri} holds no planned labeler run")
    shards = run.read_plan()["shards"]
    problems: list[str] = []
    done = run.done_shards()
    for shard in shards:
        shard_id = shard["shard_id"]
        if shard_id not in done:
            problems.append(f"shard {shard_id}: not done (re-run the command to finish the run)")
            continue
        problem = shard_problem(run, shard_id, shard["n_images"])
        if problem is not None:
            problems.append(f"shard {shard_id}: {problem}")
    problems += [f"shard {shard_id}: failed after its retries"
                 for shard_id in sorted(run.failed_shards())]
    if problems:  # the merged outputs are only meaningful over a sound, finished run
        return problems
    problems += _check_merged_parts(run, shards)
    labeled, image_problems = _check_images(run, shards)
    problems += image_problems
    expected_annotations, rle_problems = _check_annotations(run, shards)
    problems += rle_problems
    problems += _check_coco(output, labeled, expected_annotations, run.read_categories())
    return problems


def _check_merged_parts(run: RunFolder, shards: list[dict]) -> list[str]:
    output = run.output
    wanted = {f"part-{index:06d}-{shard['shard_id']}.parquet": shard["shard_id"]
              for index, shard in enumerate(shards)}
    problems = [f"annotations/{name}: not a part of the plan"
                for name in sorted(set(output.list("annotations")) - set(wanted))]
    for name, shard_id in wanted.items():
        relative = f"annotations/{name}"
        if not output.exists(relative):
            problems.append(f"{relative}: missing")
            continue
        recorded = run.read_stats(shard_id)["parts"]["annotations.parquet"]["sha256"]
        if file_sha256(output, relative) != recorded:
            problems.append(f"{relative}: differs from shard {shard_id}'s committed part")
    return problems


def _check_images(run: RunFolder, shards: list[dict]) -> tuple[dict[int, tuple], list[str]]:
    """Check ``images.parquet`` against the manifests; returns labeled id -> (width, height)."""
    output = run.output
    planned = Counter(entry["image_id"] for shard in shards
                      for entry in run.read_manifest(shard["shard_id"]))
    try:
        with output.open("images.parquet") as handle:
            table = pq.read_table(handle, schema=schema.IMAGES)
    except FileNotFoundError:
        return {}, ["images.parquet: missing"]
    except Exception as error:  # noqa: BLE001 - any reader error means the file is unreadable
        return {}, [f"images.parquet: unreadable ({type(error).__name__}: {error})"]
    rows = table.select(["image_id", "status", "width", "height"]).to_pylist()
    found = Counter(row["image_id"] for row in rows)
    problems = []
    missing = sorted((planned - found).elements())
    extra = sorted((found - planned).elements())
    if missing:
        problems.append(f"images.parquet: {len(missing)} planned images missing "
                        f"(ids {_some(missing)})")
    if extra:
        problems.append(f"images.parquet: {len(extra)} rows not planned or repeated "
                        f"(ids {_some(extra)})")
    labeled = {row["image_id"]: (row["width"], row["height"]) for row in rows
               if row["status"] == schema.IMAGE_STATUS_LABELED}
    return labeled, problems


def _check_annotations(run: RunFolder, shards: list[dict]) -> tuple[Counter, list[str]]:
    """Decode every RLE; returns the digests of the COCO records coco.json must hold."""
    expected: Counter = Counter()
    problems: list[str] = []
    for shard in shards:
        for row in _annotation_rows(run, shard["shard_id"]):
            rle = {"size": list(row["segmentation_size"]),
                   "counts": row["segmentation_counts"].encode()}
            try:
                area = int(mask_util.decode(rle).sum())
            except Exception as error:  # noqa: BLE001 - pycocotools raises bare Exceptions
                problems.append(f"annotation {row['id']} (shard {shard['shard_id']}): invalid "
                                f"RLE ({error})")
                continue
            if area != row["area"]:
                problems.append(f"annotation {row['id']} (shard {shard['shard_id']}): RLE covers "
                                f"{area} pixels, area says {row['area']}")
            expected[_digest(coco_annotation(row))] += 1
    return expected, _capped(problems)


def _annotation_rows(run: RunFolder, shard_id: str) -> Iterator[dict]:
    with run.output.open(run.shard_part(shard_id, "annotations.parquet")) as handle:
        table = pq.read_table(handle, schema=schema.ANNOTATIONS)
    for batch in table.to_batches(max_chunksize=4096):
        yield from batch.to_pylist()


def _check_coco(output: Folder, labeled: dict[int, tuple], expected: Counter,
                categories: list[dict] | None) -> list[str]:
    try:
        with output.open("coco.json") as handle:
            coco = json.load(handle)
    except FileNotFoundError:
        return ["coco.json: missing"]
    except ValueError as error:
        return [f"coco.json: does not parse ({error})"]
    try:
        images = {int(image["id"]): (image["width"], image["height"]) for image in coco["images"]}
        found = Counter(_digest(annotation) for annotation in coco["annotations"])
        coco_categories = coco["categories"]
    except (KeyError, TypeError, ValueError) as error:
        return [f"coco.json: not a COCO file ({type(error).__name__}: {error})"]
    problems = []
    if len(coco["images"]) != len(images) or images != labeled:
        differing = sorted(set(images.items()) ^ set(labeled.items()))
        problems.append(f"coco.json: {len(coco['images'])} images, images.parquet has "
                        f"{len(labeled)} labeled; differing ids {_some([i for i, _ in differing])}")
    if found != expected:
        problems.append(f"coco.json: {sum(found.values())} annotations, the parts hold "
                        f"{sum(expected.values())}; {sum((found - expected).values())} do not "
                        "match any part row")
    if categories is not None and coco_categories != categories:
        problems.append("coco.json: categories differ from the run's")
    return problems


def _digest(record: dict) -> bytes:
    return hashlib.blake2b(json.dumps(record, sort_keys=True).encode(), digest_size=16).digest()


def _some(values: list) -> str:
    shown = ", ".join(str(value) for value in values[:5])
    return shown + (", ..." if len(values) > 5 else "")


def _capped(problems: list[str]) -> list[str]:
    if len(problems) <= MAX_LISTED:
        return problems
    return problems[:MAX_LISTED] + [f"... and {len(problems) - MAX_LISTED} more"]
