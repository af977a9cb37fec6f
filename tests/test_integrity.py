"""Run folder integrity end to end: the output lease, checksummed parts, verify, failures that heal.

Faults are triggered by events, never timers: a lease holder is a subprocess that reports it holds
the lease and then blocks on stdin; parts are damaged on disk between runs; an input object is
uploaded to the S3 test server only after the first run. The run folder, not Ray, is under test:
every run uses the in-process executor (the same driver loop and commit protocol as on Ray).
"""

# The collection fixture of test_runtime_ray is imported, then named as a test parameter: F811 is
# how ruff sees that.
# ruff: noqa: F811

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from labeler.cli import main
from labeler.runtime import job as job_module
from labeler.runtime.status import describe_run
from tests.s3server import S3Server
from tests.test_runtime_ray import (  # noqa: F401 - a fixture used by the tests below
    BUCKET,
    REPO,
    assert_same_output,
    collection,
    job_config,
)

HOLD_LEASE = """
import sys
from labeler.io.folders import Folder
from labeler.runtime.lease import OutputLease
OutputLease(Folder(sys.argv[1])).acquire()
print("held", flush=True)
sys.stdin.read()
"""


def _run_args(input_uri: str, output: str, *extra: str) -> list[str]:
    return ["run", "--input", input_uri, "--output", output, "--model", "tiny", "--executor", "local",
            "--shard-size", "2", "--batch-size", "2", "--workers", "1", "--no-progress", *extra]


@pytest.fixture(scope="module")
def reference(collection, tmp_path_factory) -> Path:
    """The uninterrupted run every damaged or refused run is compared with."""
    output = tmp_path_factory.mktemp("reference") / "out"
    summary = job_module.run_job(job_config(str(collection), str(output), executor="local"),
                                 progress=False)
    assert summary.complete and summary.images == 4 and summary.labeled == 4
    assert summary.retries == 0
    return output


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _flip_bit(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _shards(output: Path) -> list[str]:
    return [s["shard_id"] for s in json.loads((output / "run" / "plan.json").read_text())["shards"]]


def test_lease_refuses_a_second_driver_then_a_killed_holder_is_taken_over(
    reference, collection, tmp_path, capsys
):
    output = tmp_path / "out"
    shutil.copytree(reference, output)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LEASE, str(output)], cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)}, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = _tree(output)
        assert describe_run(str(output)).splitlines()[0].endswith("running")
        code = main(_run_args(str(collection), str(output), "--overwrite"))
        error = capsys.readouterr().err.strip().splitlines()
        assert code == 2
        assert len(error) == 1 and "refusing --overwrite" in error[0]
        assert f"pid {holder.pid}" in error[0]
        assert _tree(output) == before  # nothing cleared, nothing written
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
    assert describe_run(str(output)).splitlines()[0].endswith("interrupted")  # at once
    assert main(_run_args(str(collection), str(output))) == 0  # takes over at once
    assert "taking over" not in capsys.readouterr().out
    assert not (output / "run" / "lease.json").exists()
    assert describe_run(str(output)).splitlines()[0].endswith("complete")
    assert_same_output(reference, output)


def test_damaged_parts_are_redone_and_never_merged(reference, collection, tmp_path, capsys,
                                                  caplog):
    output = tmp_path / "out"
    shutil.copytree(reference, output)
    first, second = _shards(output)
    corrupt = output / "run" / "shards" / first / "annotations.parquet"
    _flip_bit(corrupt, corrupt.stat().st_size // 2)  # same size: only the digest tells
    (output / "run" / "shards" / second / "images.parquet").unlink()
    status = describe_run(str(output))
    assert "damaged" in status.splitlines()[0]
    assert f"damaged shard {first}: part corrupt" in status
    assert f"damaged shard {second}: part missing" in status
    assert main(["verify", str(output)]) == 1
    assert f"shard {first}: part corrupt" in capsys.readouterr().out

    with caplog.at_level("WARNING", logger="labeler"):
        assert main(_run_args(str(collection), str(output))) == 0
    messages = [record.getMessage() for record in caplog.records]
    assert any(m.startswith(f"shard {first}: part corrupt") and m.endswith("redoing")
               for m in messages)
    assert any(m.startswith(f"shard {second}: part missing") and m.endswith("redoing")
               for m in messages)
    assert_same_output(reference, output)
    assert main(["verify", str(output)]) == 0
    assert "sound" in capsys.readouterr().out


def test_a_flipped_bit_in_a_coco_fragment_is_caught_and_the_shard_redone(
    reference, collection, tmp_path, capsys, caplog
):
    output = tmp_path / "out"
    shutil.copytree(reference, output)
    first = _shards(output)[0]
    fragment = output / "run" / "shards" / first / "coco_annotations.json"
    _flip_bit(fragment, fragment.read_bytes().index(b'"counts": "') + 14)  # still valid JSON
    assert f"damaged shard {first}: part corrupt" in describe_run(str(output))
    assert main(["verify", str(output)]) == 1
    assert f"shard {first}: part corrupt" in capsys.readouterr().out
    with caplog.at_level("WARNING", logger="labeler"):
        assert main(_run_args(str(collection), str(output))) == 0
    assert any(record.getMessage().startswith(f"shard {first}: part corrupt")
               for record in caplog.records)
    assert_same_output(reference, output)
    assert main(["verify", str(output)]) == 0


@pytest.mark.parametrize("damage", ["truncate images.parquet", "truncate coco.json",
                                    "remove an annotations part", "rewrite coco.json"])
def test_a_damaged_merged_output_is_reported_and_merged_again_without_relabelling(
    reference, collection, tmp_path, capsys, monkeypatch, damage
):
    output = tmp_path / "out"
    shutil.copytree(reference, output)
    action, name = damage.split(" ", 1)
    target = min((output / "annotations").iterdir()) if name == "an annotations part" \
        else output / name
    if action == "truncate":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    elif action == "remove":
        target.unlink()
    else:  # same size, other bytes, written later: only the time tells
        data = target.read_bytes()
        target.write_bytes(data.replace(b'"iscrowd": 0', b'"iscrowd": 1', 1))
        os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10**9))
    relative = str(target.relative_to(output))
    status = describe_run(str(output))
    assert status.splitlines()[0].endswith("damaged"), status
    assert f"damaged output {relative}" in status

    monkeypatch.setattr(job_module, "execute_shards",
                        lambda *a, **k: pytest.fail("relabelled a shard to heal a merged file"))
    capsys.readouterr()
    assert main(_run_args(str(collection), str(output))) == 0
    assert describe_run(str(output)).splitlines()[0].endswith("complete")
    assert main(["verify", str(output)]) == 0
    assert_same_output(reference, output)
    assert _tree(output)[relative] == _tree(reference)[relative]


def test_verify_catches_a_flipped_bit_in_coco_json(reference, tmp_path, capsys):
    output = tmp_path / "out"
    shutil.copytree(reference, output)
    assert main(["verify", str(output)]) == 0
    coco = output / "coco.json"
    text = coco.read_bytes()
    _flip_bit(coco, text.index(b'"counts": "') + len(b'"counts": "') + 3)  # still valid JSON
    json.loads(coco.read_bytes())
    capsys.readouterr()
    assert main(["verify", str(output)]) == 1
    report = capsys.readouterr().out
    assert "coco.json" in report and "do not match any part row" in report
    assert coco.read_bytes() != text  # verify rewrote nothing


@pytest.fixture
def s3_manifest(s3_server: S3Server, collection: Path) -> tuple[str, str]:
    """A manifest of the four images on S3 whose last object is not uploaded yet."""
    s3_server.create_bucket(BUCKET)
    fs = s3_server.filesystem()
    paths = sorted(collection.rglob("*.*"))
    for path in paths[:-1]:
        fs.pipe_file(f"{BUCKET}/heal/{path.relative_to(collection).as_posix()}", path.read_bytes())
    uris = [f"s3://{BUCKET}/heal/{p.relative_to(collection).as_posix()}" for p in paths]
    fs.pipe_file(f"{BUCKET}/heal/manifest.txt", ("\n".join(uris) + "\n").encode())
    missing = paths[-1]
    return f"s3://{BUCKET}/heal/manifest.txt", missing.relative_to(collection).as_posix()


def test_a_missing_input_fails_retryable_and_a_rerun_labels_it(
    s3_env, s3_server, s3_manifest, collection, tmp_path, capsys
):
    manifest, missing = s3_manifest
    output = tmp_path / "out"
    args = _run_args(manifest, str(output))
    assert main(args) == 3
    out = capsys.readouterr().out
    assert "0 images failed permanently; 1 images may succeed on a re-run" in out
    with (output / "images.parquet").open("rb") as handle:
        rows = {r["uri"]: r for r in pq.read_table(handle).to_pylist()}
    failed = rows[f"s3://{BUCKET}/heal/{missing}"]
    assert failed["status"] == "failed" and failed["reason"] == "read_error"
    assert failed["retryable"] is True
    ids = {uri: row["image_id"] for uri, row in rows.items()}
    stats = {s: (output / "run" / "stats" / f"{s}.json").read_bytes() for s in _shards(output)}

    assert main([*args, "--no-retry-failed"]) == 3  # kept: nothing redone
    assert "0 of 2 shards processed" in capsys.readouterr().out

    s3_server.filesystem().pipe_file(f"{BUCKET}/heal/{missing}", (collection / missing).read_bytes())
    assert main(args) == 0
    assert "1 of 2 shards processed" in capsys.readouterr().out
    with (output / "images.parquet").open("rb") as handle:
        healed = {r["uri"]: r for r in pq.read_table(handle).to_pylist()}
    assert all(row["status"] == "labeled" for row in healed.values())
    assert {uri: row["image_id"] for uri, row in healed.items()} == ids
    changed = [s for s, data in stats.items()
               if (output / "run" / "stats" / f"{s}.json").read_bytes() != data]
    assert changed == [failed["shard_id"]]  # only the shard holding the failure was redone
    assert main([*args, "--strict"]) == 0


def test_an_etag_is_the_same_stamp_quoted_by_a_head_and_bare_in_a_listing():
    from labeler.runtime.integrity import _stamp

    head = {"ETag": '"86d0274d"', "LastModified": "2026-12-07T08:00:47Z"}
    listing = {"ETag": "86d0274d", "LastModified": "2026-12-07T08:00:47.201Z"}
    assert _stamp(head) == _stamp(listing) == "ETag:86d0274d"
    assert _stamp({"mtime": 12.5}) == "mtime:12.5"
