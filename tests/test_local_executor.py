"""The in-process executor: the same driver loop as Ray's, with workers in this process.

The driver loop's verdicts (markers written by the driver after the worker committed, the
application-error budget, disk faults, workers that cannot start) are checked with scripted
workers and a real run folder; a whole ``labeler.run(executor="local")`` runs with ``import ray``
made to fail.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import threading

import pytest
from PIL import Image

import labeler
from labeler.config import build_config
from labeler.errors import StorageFaultError, UserError
from labeler.io.folders import Folder
from labeler.runtime.executor import MAX_SHARD_ATTEMPTS, Driver, ShardEvents
from labeler.runtime.local_executor import InProcessWorkers
from labeler.runtime.run_folder import RunFolder
from labeler.runtime.scheduler import WorkersCannotStartError
from labeler.runtime.status import describe_run
from tests.helpers import flat_regions_image


class ScriptedWorker:
    """A worker whose ``process`` follows a script: shard id -> exceptions to raise, in order.

    It checks the commit protocol: when it is called for a shard, the driver has not marked
    that shard done yet, and the worker's own commit (``committed``) happens before the marker.
    """

    def __init__(self, run: RunFolder, failures: dict[str, list[BaseException]]) -> None:
        self.run = run
        self.failures = failures
        self.calls: list[tuple[str, int]] = []
        self.threads: set[str] = set()
        self.committed: list[str] = []
        self.closed = False

    def ready(self) -> dict:
        return {"host": "here", "pid": 1, "device": "cpu", "categories": [{"id": 1, "name": "x"}]}

    def process(self, output_uri: str, shard_id: str, attempt: int,
                read_uris: dict[str, str] | None = None) -> dict:
        assert output_uri == self.run.output.uri
        assert not self.run.is_done(shard_id), "the marker must come after the worker's commit"
        self.calls.append((shard_id, attempt))
        self.threads.add(threading.current_thread().name)
        script = self.failures.get(shard_id)
        if script:
            raise script.pop(0)
        self.committed.append(shard_id)
        return {"shard_id": shard_id, "images": 1, "failed": 0}

    def close(self) -> None:
        self.closed = True


class RecordingEvents(ShardEvents):
    def __init__(self) -> None:
        self.done: list[str] = []
        self.failed: dict[str, dict] = {}

    def shard_done(self, shard_id: str, stats: dict) -> None:
        self.done.append(shard_id)

    def shard_failed(self, shard_id: str, failure: dict) -> None:
        self.failed[shard_id] = failure


@pytest.fixture
def run(tmp_path) -> RunFolder:
    return RunFolder(Folder(str(tmp_path / "out")))


def test_markers_follow_commits_and_errors_cost_attempts_until_recorded(run):
    shards = [f"s{index}" for index in range(5)]
    script = {"s1": [ValueError("flaky once")],
              "s3": [ValueError(f"broken {n}") for n in range(MAX_SHARD_ATTEMPTS)]}
    worker = ScriptedWorker(run, script)
    events = RecordingEvents()
    report = Driver(InProcessWorkers(lambda: worker), 1, run, shards, events).run()

    assert sorted(report.done) == ["s0", "s1", "s2", "s4"] == sorted(run.done_shards())
    assert sorted(worker.committed) == sorted(report.done) == sorted(events.done)
    assert list(report.failed) == ["s3"] == list(events.failed)
    failure = run.failed_shards()["s3"]
    assert failure["attempts"] == MAX_SHARD_ATTEMPTS
    assert "ValueError: broken 2" in failure["error"] and "Traceback" in failure["error"]
    assert [attempt for shard, attempt in worker.calls if shard == "s1"] == [1, 2]
    assert [attempt for shard, attempt in worker.calls if shard == "s3"] == [1, 2, 3]
    assert report.retries == 1 + (MAX_SHARD_ATTEMPTS - 1) and report.worker_deaths == 0
    assert run.read_categories() == [{"id": 1, "name": "x"}]
    assert worker.closed, "the worker's post-processing threads are stopped at the end"
    assert all(name.startswith("labeler-worker") for name in worker.threads)


def test_a_disk_fault_stops_the_run_at_once(run):
    full = OSError(errno.ENOSPC, "No space left on device", "/out/part")
    worker = ScriptedWorker(run, {"s0": [RuntimeError("write failed")]})
    worker.failures["s0"][0].__cause__ = full
    with pytest.raises(StorageFaultError, match="no space left on device"):
        Driver(InProcessWorkers(lambda: worker), 1, run, ["s0", "s1"], ShardEvents()).run()
    assert not run.failed_shards()


def test_a_model_that_cannot_load_ends_the_run_after_a_few_tries(run):
    attempts = []

    def make_worker():
        attempts.append(1)
        raise OSError("model weights not found")

    with pytest.raises(WorkersCannotStartError, match="model weights not found"):
        Driver(InProcessWorkers(make_worker), 1, run, ["s0"], ShardEvents()).run()
    assert len(attempts) == 3


def test_ray_settings_are_refused_with_the_local_executor():
    base = {"input": "in", "output": "out", "executor": "local"}
    for flag, value in (("address", "ray://head:10001"), ("gpus_per_worker", 0.5)):
        with pytest.raises(UserError, match=f"--{flag.replace('_', '-')} places Ray workers"):
            build_config({**base, flag: value}, {})
    with pytest.raises(UserError, match="executor"):
        build_config({**base, "executor": "dask"}, {})
    assert build_config(base, {"workers": 2}).executor == "local"
    assert build_config({"input": "in", "output": "out"}, {}).executor == "ray"


def test_a_local_run_labels_everything_without_ray(tmp_path, monkeypatch):
    images = tmp_path / "images"
    images.mkdir()
    picture, _ = flat_regions_image(64, 64, "quadrants")
    for name in ("a", "b", "c"):
        Image.fromarray(picture).save(images / f"{name}.png")
    (images / "broken.png").write_bytes(b"not a png")
    (images / ".thumb.png").write_bytes(b"hidden")  # skipped, and counted
    (images / ".cache").mkdir()
    Image.fromarray(picture).save(images / ".cache" / "d.png")
    output = tmp_path / "out"
    monkeypatch.setitem(sys.modules, "ray", None)  # any `import ray` now raises ImportError
    summary = labeler.run({"input": str(images), "output": str(output), "model": "tiny",
                           "shard_size": 2, "device": "cpu"}, executor="local")

    assert (summary.labeled, summary.failed, summary.shards_processed) == (3, 1, 2)
    assert summary.complete and summary.worker_deaths == 0
    run = RunFolder(Folder(str(output)))
    assert run.done_shards() == {shard["shard_id"] for shard in run.read_plan()["shards"]}
    assert all(run.read_stats(shard)["worker"]["pid"] == os.getpid()
               for shard in run.done_shards())
    coco = json.loads((output / "coco.json").read_text())
    assert len(coco["images"]) == 3 and coco["annotations"]  # failed images are not in COCO
    assert "skipped  2 hidden files or folders in the input" in describe_run(str(output))
