"""The runtime's parts without Ray: scheduling verdicts, placement, prefetching, OOM splitting.

The only fake here is :class:`SizeLimitedSegmenter`, a real class that stands in for a model whose
memory only holds a few images, for the out-of-memory splitting tests.
"""

from __future__ import annotations

import io
import threading
from typing import ClassVar

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from labeler.config import JobConfig
from labeler.io.folders import Folder
from labeler.methods.base import ImageLabels, MethodProvenance
from labeler.runtime.plan import plan_run
from labeler.runtime.ray_executor import plan_placement
from labeler.runtime.run_folder import RunFolder
from labeler.runtime.scheduler import (
    READY,
    ShardScheduler,
    WorkersCannotStartError,
    WorkerSlot,
    cannot_start,
)
from labeler.runtime.shard import Prefetcher, ShardProcessor, is_out_of_memory
from labeler.timing import StageTimer

# --------------------------------------------------------------------------------------------
# Scheduling verdicts
# --------------------------------------------------------------------------------------------


def test_application_errors_are_retried_then_recorded_failed():
    scheduler = ShardScheduler(["a", "b"], max_attempts=3, max_losses=3)
    assert scheduler.take() == "a"
    assert scheduler.errored("a", "boom 1") is True
    assert list(scheduler.queue) == ["b", "a"]  # requeued behind the others
    assert scheduler.attempt_of("a") == 2
    scheduler.queue.clear()
    assert scheduler.errored("a", "boom 2") is True
    assert scheduler.errored("a", "boom 3") is False
    assert scheduler.failed["a"]["attempts"] == 3 and scheduler.failed["a"]["error"] == "boom 3"


def test_lost_shards_cost_no_attempt_and_a_poison_shard_is_bounded():
    scheduler = ShardScheduler(["a"], max_attempts=3, max_losses=2)
    scheduler.take()
    assert scheduler.lost("a", "died", charged=False) is True  # queued behind: free
    assert scheduler.record("a").losses == 0 and scheduler.attempt_of("a") == 1
    scheduler.take()
    assert scheduler.lost("a", "died", charged=True) is True
    scheduler.take()
    assert scheduler.lost("a", "died again", charged=True) is False
    assert "died 2 times" in scheduler.failed["a"]["error"]


def test_a_dead_worker_charges_only_its_running_shard():
    slot = WorkerSlot(0, ready=True)
    slot.calls.extend([("r1", "running"), ("r2", "queued")])
    verdicts = ShardScheduler.worker_died(slot, "killed")
    assert verdicts == [("running", True), ("queued", False)]
    assert not slot.calls and slot.start_failures == 0


def test_workers_that_never_start_are_counted_and_named():
    slot = WorkerSlot(0)
    for _ in range(3):
        slot.calls.extend([("ready", READY), ("r", "a")])
        assert ShardScheduler.worker_died(slot, "Traceback...\nModelLoadError: no model") == [
            ("a", False)
        ]
    assert slot.start_failures == 3
    error = cannot_start(slot, "Traceback...\nModelLoadError: no model")
    assert isinstance(error, WorkersCannotStartError)
    assert str(error).startswith("workers died 3 times before they were ready: ModelLoadError")


# --------------------------------------------------------------------------------------------
# Placement
# --------------------------------------------------------------------------------------------


def _config(**overrides) -> JobConfig:
    return JobConfig(input="in", output="out", model="tiny", **overrides)


def test_placement_cpu_and_gpu_defaults():
    cpu = plan_placement(_config(), {"CPU": 8.0}, local=True)
    assert (cpu.workers, cpu.num_gpus, cpu.num_cpus) == (1, 0.0, 1.0)
    gpu = plan_placement(_config(), {"CPU": 16.0, "GPU": 4.0}, local=True)
    assert (gpu.workers, gpu.num_gpus) == (4, 1.0)
    half = plan_placement(_config(gpus_per_worker=0.5), {"CPU": 16.0, "GPU": 2.0}, local=True)
    assert (half.workers, half.num_gpus) == (4, 0.5)
    on_cpu = plan_placement(_config(device="cpu", workers=2), {"CPU": 4.0, "GPU": 1.0}, local=True)
    assert (on_cpu.workers, on_cpu.num_gpus) == (2, 0.0)
    remote = plan_placement(_config(gpus_per_worker=1, workers=8), {"CPU": 2.0}, local=False)
    assert (remote.workers, remote.num_gpus) == (8, 1.0)  # a cluster may scale up to it


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"gpus_per_worker": 1.0}, "this machine has 0"),
        ({"workers": 3}, "3 CPU workers need 3 CPUs"),
        ({"workers": 0}, "workers: must be >= 1"),
        ({"gpus_per_worker": -1.0}, ">= 0"),
    ],
)
def test_placement_refuses_what_the_machine_cannot_do(overrides, message):
    with pytest.raises(ValueError, match=message):
        plan_placement(_config(**overrides), {"CPU": 2.0}, local=True)


# --------------------------------------------------------------------------------------------
# Prefetching
# --------------------------------------------------------------------------------------------


def test_prefetcher_reads_ahead_while_the_consumer_works():
    produced = [threading.Event() for _ in range(4)]

    def produce():
        for index in range(4):
            produced[index].set()
            yield index

    consumed = []
    with Prefetcher(produce, depth=1) as items:
        for item in items:
            # the event: item k+1 is produced while item k is still in the consumer's hands
            # (a producer that is not ahead would only run when asked for the next item)
            if item + 1 < len(produced):
                assert produced[item + 1].wait(60), f"item {item + 1} was not read ahead"
            consumed.append(item)
    assert consumed == [0, 1, 2, 3]


def test_prefetcher_bounds_read_ahead_and_stops_when_the_consumer_fails():
    produced = []
    blocked = threading.Event()

    def produce():
        for index in range(1000):
            produced.append(index)
            if index == 3:  # the one consumed, two queued, this one waiting to be queued
                blocked.set()
            yield index

    before = threading.active_count()
    with pytest.raises(RuntimeError, match="model broke"), Prefetcher(produce, depth=2) as items:
        for _ in items:
            assert blocked.wait(60), "the producer did not fill the queue"
            raise RuntimeError("model broke")
    assert len(produced) == 4  # never more than the bound, and nothing after the failure
    assert threading.active_count() == before


def test_prefetcher_hands_producer_errors_to_the_consumer():
    def produce():
        yield 1
        raise OSError("storage gone")

    with pytest.raises(OSError, match="storage gone"), Prefetcher(produce) as items:
        assert list(items)


# --------------------------------------------------------------------------------------------
# Shards with a memory-limited segmenter
# --------------------------------------------------------------------------------------------


class SizeLimitedSegmenter:
    """Labels each image as one segment, but runs out of memory above ``max_batch`` images.

    ``too_big`` marks images (by their top-left pixel value) that do not fit even alone.
    """

    categories: ClassVar[list[dict]] = [{"id": 1, "name": "segment", "supercategory": "segment"}]

    def __init__(self, max_batch: int, too_big: int | None = None, message: str | None = None):
        self.max_batch = max_batch
        self.too_big = too_big
        self.message = message
        self.calls: list[int] = []
        self.timer = StageTimer()  # the Segmenter protocol: stage timings and device
        self.device = "cpu"

    def provenance(self) -> MethodProvenance:
        return MethodProvenance(method="test", model="none")

    def label(self, images: list[np.ndarray]) -> list[ImageLabels]:
        self.calls.append(len(images))
        if len(images) > self.max_batch or any(int(im[0, 0, 0]) == self.too_big for im in images):
            if self.message:
                raise RuntimeError(self.message)
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [
            ImageLabels(np.zeros(im.shape[:2], np.int32), np.ones(1, np.int64), np.ones(1))
            for im in images
        ]


def _png(value: int, size=(24, 16)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (value, value, value)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def shard_run(tmp_path):
    """A planned run folder with one shard of 5 images (pixel values 10..50)."""
    images = tmp_path / "images"
    images.mkdir()
    for index in range(5):
        (images / f"{index}.png").write_bytes(_png(10 * (index + 1)))
    run = RunFolder(Folder(str(tmp_path / "out")))
    items = [{"uri": str(images / f"{index}.png")} for index in range(5)]
    plan = plan_run(run, items, shard_size=5)
    return run, plan["shards"][0]["shard_id"]


def _images(run: RunFolder, shard_id: str) -> list[dict]:
    with run.output.open(run.shard_part(shard_id, "images.parquet")) as handle:
        return pq.read_table(handle).to_pylist()


def test_out_of_memory_splits_the_batch_down_to_what_fits(shard_run):
    run, shard_id = shard_run
    segmenter = SizeLimitedSegmenter(max_batch=1)
    stats = ShardProcessor(segmenter, 4, None, "run").process(run.output, shard_id)
    assert stats["labeled"] == 5 and stats["failed"] == 0
    # [4] splits into [2] [2], each into [1] [1]; then the last batch of one image
    assert segmenter.calls == [4, 2, 1, 1, 2, 1, 1, 1]
    assert [row["status"] for row in _images(run, shard_id)] == ["labeled"] * 5


def test_an_image_too_big_even_alone_is_recorded_out_of_memory(shard_run):
    run, shard_id = shard_run
    segmenter = SizeLimitedSegmenter(max_batch=4, too_big=30)
    stats = ShardProcessor(segmenter, 4, None, "run").process(run.output, shard_id)
    rows = _images(run, shard_id)
    assert [row["reason"] for row in rows] == [None, None, "out_of_memory", None, None]
    assert "out of memory" in rows[2]["detail"]
    assert stats["failure_reasons"] == {"out_of_memory": 1}


def test_out_of_memory_is_recognised_by_message_too():
    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"))
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


def test_a_broken_method_fails_the_shard_and_logs_why(shard_run):
    run, shard_id = shard_run
    segmenter = SizeLimitedSegmenter(max_batch=0, message="weights are NaN")
    with pytest.raises(RuntimeError, match="weights are NaN"):
        ShardProcessor(segmenter, 2, None, "run").process(run.output, shard_id, attempt=2)
    log = run.output.read_bytes(f"run/logs/{shard_id}.log").decode()
    assert f"shard {shard_id} attempt 2 failed" in log and "weights are NaN" in log
    assert not run.output.exists(f"run/stats/{shard_id}.json")


def test_a_shard_commits_parts_stats_and_log(shard_run):
    run, shard_id = shard_run
    stats = ShardProcessor(SizeLimitedSegmenter(8), 2, None, "run", worker={"pid": 1}).process(
        run.output, shard_id
    )
    assert run.read_stats(shard_id) == stats
    assert set(stats["timings"]) == {"read", "decode", "label", "encode", "commit", "wait_input"}
    assert stats["worker"] == {"pid": 1}
    assert "5 labeled, 0 failed" in run.output.read_bytes(f"run/logs/{shard_id}.log").decode()
    assert not run.is_done(shard_id)  # the driver writes the marker, not the worker
