"""The resume's listing diff through bucket files: the same answer as counting every URI in memory,
new items in listing order, removed URIs counted and named in plan order."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from labeler.io.folders import Folder
from labeler.runtime import listing_diff
from labeler.runtime.listing_diff import Planned, diff_listing
from labeler.runtime.plan import extend_plan, plan_run
from labeler.runtime.run_folder import RunFolder


def _in_memory(plan: list[str], listing: list[dict]) -> tuple[list[dict], list[str]]:
    """What resume computed before buckets: a Counter of every plan URI."""
    known = Counter(plan)
    new = []
    for item in listing:
        if known[item["uri"]] > 0:
            known[item["uri"]] -= 1
        else:
            new.append(item)
    return new, [uri for uri, count in known.items() for _ in range(count)]


@pytest.mark.parametrize("per_bucket", [7, 1000])
def test_the_bucketed_diff_equals_the_in_memory_one(tmp_path, monkeypatch, per_bucket):
    monkeypatch.setattr(listing_diff, "URIS_PER_BUCKET", per_bucket)
    rng = np.random.default_rng(0)
    names = [f"s3://b/{i}.jpg" for i in range(300)] + ["s3://b/tab\there.jpg", "s3://b/nl\n.jpg"]
    plan = [names[i] for i in rng.integers(0, 200, 250)] + names[-2:]
    listing = [{"uri": names[i], "ref": {"n": int(i)}} for i in rng.integers(50, 302, 400)]
    diff = diff_listing((Planned(uri) for uri in plan), iter(listing), len(plan), str(tmp_path))
    new, removed = _in_memory(plan, listing)
    assert list(diff.new_items()) == new
    assert diff.removed == len(removed)
    assert diff.removed_examples == list(dict.fromkeys(removed))[:5]


def test_resume_appends_new_images_in_listing_order_and_reports_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(listing_diff, "URIS_PER_BUCKET", 3)
    run = RunFolder(Folder(str(tmp_path)))
    first = [{"uri": f"s3://b/{i:03d}.jpg"} for i in range(10)]
    plan_run(run, first, shard_size=4)
    later = first[2:] + [{"uri": f"s3://b/new{i}.jpg"} for i in (5, 1, 3)]
    plan, changes = extend_plan(run, later, shard_size=4)
    assert changes.new_images == 3 and changes.removed_images == 2
    assert changes.removed_examples == ["s3://b/000.jpg", "s3://b/001.jpg"]
    appended = [entry for shard in changes.new_shards for entry in run.read_manifest(shard["shard_id"])]
    assert [(e["uri"], e["image_id"]) for e in appended] == [
        ("s3://b/new5.jpg", 11), ("s3://b/new1.jpg", 12), ("s3://b/new3.jpg", 13)]
    assert plan["n_images"] == 13
