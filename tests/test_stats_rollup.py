"""Rolled-up shard stats (labeler.runtime.rollup): ``labeler status`` reads a few summary files
instead of one stats file per shard, and says exactly what it says without them, whatever
happened to the roll-ups (damaged, stale after a redo, missing after a killed driver)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import labeler
from labeler.io.folders import Folder
from labeler.runtime import rollup
from labeler.runtime.commit import commit_shard
from labeler.runtime.run_folder import RunFolder
from labeler.runtime.status import describe_run, run_progress
from labeler.testing.committed_runs import mask_pool, synthesize_run
from tests import toy_method
from tests.preflight_cases import make_input


@pytest.fixture
def small_groups(monkeypatch):
    monkeypatch.setattr(rollup, "GROUP_SHARDS", 4)


@pytest.fixture
def stats_reads(monkeypatch):
    """The shards whose own stats file was read."""
    reads: list[str] = []
    original = RunFolder.read_stats

    def counting(self, shard_id):
        reads.append(shard_id)
        return original(self, shard_id)

    monkeypatch.setattr(RunFolder, "read_stats", counting)
    return reads


def _run(tmp_path: Path, n_images: int = 20) -> tuple[Path, RunFolder, list[dict]]:
    """A committed run of 10 shards (groups of 4: 4, 4, 2), every group rolled up."""
    out = tmp_path / "out"
    plan = synthesize_run(str(out), n_images, shard_size=2, pool=mask_pool(3))
    run = RunFolder(Folder(str(out)))
    shards = plan["shards"]
    writer = rollup.RollUpWriter(run, shards, run.done_shards())
    assert writer.fill() == 3
    assert writer.fill() == 0  # none missing any more
    return out, run, shards


def _without_rollups(out: Path) -> tuple[dict, str]:
    """Status of a copy of the output without its roll-ups."""
    bare = out.parent / "bare"
    shutil.rmtree(bare, ignore_errors=True)
    shutil.copytree(out, bare, copy_function=shutil.copy2)  # same stamps (mtimes)
    shutil.rmtree(bare / "run" / "rollup")
    progress = run_progress(str(bare))
    return progress, describe_run(str(bare)).replace(str(bare), str(out))


def _status(out: Path) -> tuple[dict, str]:
    return run_progress(str(out)), describe_run(str(out))


def test_status_reads_the_rollups_not_the_stats_files_and_says_the_same(
        tmp_path, small_groups, stats_reads):
    out, _, shards = _run(tmp_path)
    assert sorted(p.name for p in (out / "run" / "rollup").iterdir()) == [
        "group-000000.json", "group-000001.json", "group-000002.json"]
    stats_reads.clear()
    with_rollups = _status(out)
    assert stats_reads == []  # every shard's stats came from its group's roll-up
    assert with_rollups == _without_rollups(out)
    assert with_rollups[0]["state"] == "interrupted" and with_rollups[0]["shards_done"] == 10
    assert with_rollups[0]["annotations"] > 0 and with_rollups[0]["damaged_shards"] == {}
    stats_reads.clear()
    run_progress(str(out), deep=True)  # --deep trusts no roll-up
    assert sorted(stats_reads) == sorted(s["shard_id"] for s in shards)


@pytest.mark.parametrize("damage", ["flipped bit", "truncated", "entries edited"])
def test_a_damaged_rollup_is_ignored_and_its_shards_read_from_their_stats(
        tmp_path, small_groups, stats_reads, damage, caplog):
    out, _, shards = _run(tmp_path)
    path = out / "run" / "rollup" / "group-000001.json"
    data = path.read_bytes()
    if damage == "flipped bit":
        at = data.index(b'"annotations": ') + len(b'"annotations": ')
        data = data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]  # a count, still JSON
        json.loads(data.split(b"\n", 1)[1])
    elif damage == "truncated":
        data = data[: len(data) // 2]
    else:
        header, body = data.split(b"\n", 1)
        entries = json.loads(body)
        next(iter(entries.values()))["stats"]["labeled"] += 1
        data = header + b"\n" + json.dumps(entries).encode()
    path.write_bytes(data)
    stats_reads.clear()
    run_progress(str(out))
    assert sorted(stats_reads) == sorted(s["shard_id"] for s in shards[4:8])
    assert _status(out) == _without_rollups(out)
    assert "group-000001.json is damaged: ignored" in caplog.text


def test_a_shard_redone_after_its_rollup_is_read_from_its_new_stats(
        tmp_path, small_groups, stats_reads):
    out, run, shards = _run(tmp_path)
    shard = shards[5]["shard_id"]
    stats = run.read_stats(shard)
    # redone: one image failed this time, fewer annotations, new parts (new sizes and digests)
    images = [{**row} for row in _rows(run, shard, "images")]
    annotations = [row for row in _rows(run, shard, "annotations")
                   if row["image_id"] != images[0]["image_id"]]
    images[0].update(status="failed", reason="decode_error", n_annotations=0)
    records = commit_shard(run, shard, images, annotations)
    run.write_stats(shard, {**stats, "labeled": stats["labeled"] - 1, "failed": 1,
                            "annotations": len(annotations), "parts": records,
                            "failure_reasons": {"decode_error": 1}, "seconds": 9.5})
    stats_reads.clear()
    run_progress(str(out))
    assert stats_reads == [shard]  # the one stats file the roll-up no longer vouches for
    progress, text = _status(out)
    assert (progress, text) == _without_rollups(out)
    assert progress["damaged_shards"] == {} and progress["failure_reasons"] == {"decode_error": 1}
    assert "failed: decode_error  1" in text


def test_a_damaged_part_is_reported_the_same_with_and_without_rollups(tmp_path, small_groups):
    out, _, shards = _run(tmp_path)
    shard = shards[2]["shard_id"]
    part = out / "run" / "shards" / shard / "annotations.parquet"
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0x01
    part.write_bytes(bytes(data))
    (out / "run" / "stats" / f"{shards[7]['shard_id']}.json").unlink()
    progress, text = _status(out)
    assert (progress, text) == _without_rollups(out)
    assert progress["damaged_shards"] == {
        shard: (f"part corrupt (run/shards/{shard}/annotations.parquet: sha256 differs from the "
                "one recorded)"),
        shards[7]["shard_id"]: "stats missing"}


def test_groups_a_killed_driver_never_rolled_up_are_read_shard_by_shard(
        tmp_path, small_groups, stats_reads):
    out, run, shards = _run(tmp_path)
    (out / "run" / "rollup" / "group-000002.json").unlink()
    stats_reads.clear()
    run_progress(str(out))
    assert sorted(stats_reads) == sorted(s["shard_id"] for s in shards[8:])
    assert _status(out) == _without_rollups(out)
    writer = rollup.RollUpWriter(run, shards, run.done_shards())
    assert writer.fill() == 1  # the driver's merge writes what is missing
    stats_reads.clear()
    _status(out)
    assert stats_reads == []


def test_the_driver_rolls_up_as_shards_are_done_and_again_after_a_redo(tmp_path, monkeypatch):
    monkeypatch.setattr(rollup, "GROUP_SHARDS", 1)
    output = tmp_path / "out"
    job = {"method": toy_method.SPEC.name, "input": str(make_input(tmp_path / "images")),
           "output": str(output), "shard_size": 1}
    labeler.run(job, executor="local")
    rollups = output / "run" / "rollup"
    assert sorted(p.name for p in rollups.iterdir()) == ["group-000000.json", "group-000001.json"]
    assert _status(output) == _without_rollups(output)
    assert _status(output)[0]["state"] == "complete"

    # shard 1 redone: its stats file is rewritten, and so is the roll-up of its group
    plan = json.loads((output / "run" / "plan.json").read_text())
    redone = plan["shards"][1]["shard_id"]
    before = rollup._decode((rollups / "group-000001.json").read_bytes())[redone]
    (output / "run" / "shards" / redone / "images.parquet").unlink()
    labeler.run(job, executor="local")
    after = rollup._decode((rollups / "group-000001.json").read_bytes())[redone]
    assert after["stamp"] != before["stamp"]
    assert _status(output) == _without_rollups(output)
    assert _status(output)[0]["state"] == "complete"


def _rows(run: RunFolder, shard_id: str, kind: str) -> list[dict]:
    from labeler.output import parts
    part = {"images": parts.IMAGES, "annotations": parts.ANNOTATIONS}[kind]
    return parts.read_part(run.output, parts.shard_part(shard_id, part), part).to_pylist()


def test_the_writer_reads_each_shard_once_as_it_is_done(tmp_path, small_groups, stats_reads):
    out = tmp_path / "out"
    plan = synthesize_run(str(out), 12, shard_size=2, pool=mask_pool(3))  # groups: 4 + 2
    run = RunFolder(Folder(str(out)))
    shards = plan["shards"]
    writer = rollup.RollUpWriter(run, shards, {s["shard_id"] for s in shards[4:]})
    stats_reads.clear()
    for shard in shards[:3]:
        writer.shard_done(shard["shard_id"])
    assert not (out / "run" / "rollup").exists()  # group 0 not complete yet
    writer.shard_done(shards[3]["shard_id"])
    assert stats_reads == [s["shard_id"] for s in shards[:4]]  # once each, as they were done
    assert (out / "run" / "rollup" / "group-000000.json").exists()
    stats_reads.clear()
    assert writer.fill() == 1  # group 1, done by an earlier run: read now
    assert stats_reads == [s["shard_id"] for s in shards[4:]]
    stats_reads.clear()
    run_progress(str(out))
    assert stats_reads == []
