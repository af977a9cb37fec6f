"""Post-processing off the model's path and shards that overlap on one worker (no Ray).

:class:`GridSegmenter` is a real two-step segmenter (``label_raw`` on the model's thread, ``finish``
on the pool) whose label grids are made from the pixels, so every image's labels differ; it can
be told to break the host step of one image, and it records how many model calls overlap.
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
from labeler.errors import UserError
from labeler.io.folders import Folder
from labeler.methods.base import ImageLabels, MethodProvenance
from labeler.methods.device_labels import RawLabels, device_step, finish_labels
from labeler.output.failures import POSTPROCESS_ERROR
from labeler.runtime.plan import plan_run
from labeler.runtime.postprocess import PostProcessPool
from labeler.runtime.ray_executor import plan_placement
from labeler.runtime.run_folder import RunFolder
from labeler.runtime.shard import ShardProcessor
from labeler.timing import StageTimer


class GridSegmenter:
    """Labels each image with a 4x4 grid of segments numbered from its first pixel's value.

    Args:
        broken_value: ``finish`` raises for images whose first pixel has this value.
    """

    categories: ClassVar[list[dict]] = [{"id": 1, "name": "segment", "supercategory": "segment"}]

    def __init__(self, broken_value: int | None = None) -> None:
        self.broken_value = broken_value
        self.timer = StageTimer()
        self.device = "cpu"
        self.inside = 0
        self.most_inside = 0
        self.lock = threading.Lock()

    def provenance(self) -> MethodProvenance:
        return MethodProvenance(method="grid", model="none")

    def label_raw(self, images: list[np.ndarray]) -> list[RawLabels]:
        with self.lock:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
        try:
            out = []
            for image in images:
                base = int(image[0, 0, 0])
                grid = torch.arange(16, dtype=torch.int64).reshape(4, 4) + base
                confidence = torch.full((4, 4), 0.5) + torch.arange(16).reshape(4, 4) / 64
                out.append(device_step(grid, confidence, *image.shape[:2]))
            return out
        finally:
            with self.lock:
                self.inside -= 1

    def finish(self, raw: RawLabels) -> ImageLabels:
        if self.broken_value is not None and int(raw.grid_labels[0, 0]) == self.broken_value:
            raise ValueError("label grid is corrupt")
        return finish_labels(raw)


class OneStepGridSegmenter(GridSegmenter):
    """The same labels through ``label`` alone (a segmenter without the two-step split)."""

    label_raw = None  # type: ignore[assignment]

    def label(self, images: list[np.ndarray]) -> list[ImageLabels]:
        return [finish_labels(raw) for raw in GridSegmenter.label_raw(self, images)]


def _png(value: int, size=(40, 24)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (value, value, value)).save(buffer, "PNG")
    return buffer.getvalue()


def _planned_run(tmp_path, name: str, values: list[int], shard_size: int) -> tuple[RunFolder, list]:
    images = tmp_path / f"{name}-images"
    images.mkdir()
    for index, value in enumerate(values):
        (images / f"{index:02d}.png").write_bytes(_png(value))
    run = RunFolder(Folder(str(tmp_path / name)))
    items = [{"uri": str(images / f"{index:02d}.png")} for index in range(len(values))]
    plan = plan_run(run, items, shard_size=shard_size)
    return run, [shard["shard_id"] for shard in plan["shards"]]


def _table(run: RunFolder, shard_id: str, name: str) -> list[dict]:
    with run.output.open(run.shard_part(shard_id, name)) as handle:
        rows = pq.read_table(handle).to_pylist()
    for row in rows:  # the URIs name each run's own folder, whose files have their own mtimes
        row.pop("uri", None)
        row.pop("file_name", None)
        row.pop("shard_id", None)
        row.pop("input_identity", None)
    return rows


VALUES = [10, 20, 30, 40, 50, 60, 70]


def test_a_postprocess_error_fails_that_image_only_in_order(tmp_path):
    run, [shard_id] = _planned_run(tmp_path, "out", VALUES, shard_size=7)
    processor = ShardProcessor(GridSegmenter(broken_value=40), 3, None, "run",
                               postprocess_threads=2)
    stats = processor.process(run.output, shard_id)
    processor.close()
    images = _table(run, shard_id, "images.parquet")
    assert [row["status"] for row in images] == ["labeled"] * 3 + ["failed"] + ["labeled"] * 3
    assert images[3]["reason"] == POSTPROCESS_ERROR
    assert "label grid is corrupt" in images[3]["detail"]
    assert stats["failure_reasons"] == {POSTPROCESS_ERROR: 1} and stats["labeled"] == 6
    annotations = _table(run, shard_id, "annotations.parquet")
    image_ids = [row["image_id"] for row in annotations]
    assert image_ids == sorted(image_ids) and len(annotations) == 6 * 16
    assert images[3]["image_id"] not in image_ids
    assert [row["id"] for row in annotations] == sorted(row["id"] for row in annotations)
    log = run.output.read_bytes(f"run/logs/{shard_id}.log").decode()
    assert "post-processing failed" in log and "label grid is corrupt" in log


def test_pool_size_and_segmenter_kind_do_not_change_the_output(tmp_path):
    outputs = []
    for name, segmenter, threads in (("one-step", OneStepGridSegmenter(), 1),
                                     ("pool-1", GridSegmenter(), 1),
                                     ("pool-3", GridSegmenter(), 3)):
        run, shard_ids = _planned_run(tmp_path, name, VALUES, shard_size=7)
        processor = ShardProcessor(segmenter, 2, None, "run", postprocess_threads=threads)
        processor.process(run.output, shard_ids[0])
        processor.close()
        outputs.append([_table(run, shard_ids[0], part)
                        for part in ("images.parquet", "annotations.parquet")])
    assert outputs[0] == outputs[1] == outputs[2]
    assert len(outputs[0][1]) == 7 * 16


def test_two_shards_at_once_take_the_model_in_turn(tmp_path):
    run, shard_ids = _planned_run(tmp_path, "together", VALUES * 2, shard_size=7)
    segmenter = GridSegmenter()
    processor = ShardProcessor(segmenter, 2, None, "run", postprocess_threads=2)
    stats: dict[str, dict] = {}
    errors: list[BaseException] = []

    def work(shard_id: str) -> None:
        try:
            stats[shard_id] = processor.process(run.output, shard_id)
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(shard_id,)) for shard_id in shard_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    processor.close()
    assert not errors
    assert segmenter.most_inside == 1  # the model never ran two batches at once
    alone, alone_ids = _planned_run(tmp_path, "alone", VALUES * 2, shard_size=7)
    sequential = ShardProcessor(GridSegmenter(), 2, None, "run")
    for together_id, alone_id in zip(shard_ids, alone_ids):
        sequential.process(alone.output, alone_id)
        for part in ("images.parquet", "annotations.parquet"):
            assert _table(run, together_id, part) == _table(alone, alone_id, part)
        log = run.output.read_bytes(f"run/logs/{together_id}.log").decode()
        other = next(shard for shard in shard_ids if shard != together_id)
        assert together_id in log and other not in log  # each log holds its own shard's records
        assert stats[together_id]["pipeline"]["postprocess_threads"] == 2
    sequential.close()


def test_results_come_in_submission_order_and_submit_waits_for_the_oldest():
    pool = PostProcessPool(2)
    first_may_end = threading.Event()
    finished: list[str] = []

    def job(name: str, wait: threading.Event | None = None) -> str:
        if wait is not None:
            wait.wait()
        finished.append(name)
        return name

    results = pool.results(limit=2)
    results.submit(job, "a", first_may_end)  # a is held until b has finished
    results.put("failed-before-the-model")
    results.submit(lambda: (job("b"), first_may_end.set())[0])
    # Three outstanding > limit 2: that submit returned only once the oldest ("a") was done.
    assert "a" in finished
    results.submit(job, "c")
    assert list(results.drain()) == ["a", "failed-before-the-model", "b", "c"]
    assert finished.index("b") < finished.index("a")
    pool.close()


def test_an_exception_escaping_a_job_is_raised_when_taken():
    pool = PostProcessPool(1)
    results = pool.results(limit=4)

    def broken() -> None:
        raise OSError("disk gone")

    results.submit(broken)
    with pytest.raises(OSError, match="disk gone"):
        list(results.drain())
    pool.close()


def _config(**overrides) -> JobConfig:
    return JobConfig(input="in", output="out", model="tiny", **overrides)


def test_cpus_per_worker_sets_reservation_and_threads():
    gpu = plan_placement(_config(), {"CPU": 16.0, "GPU": 4.0}, local=True)
    assert (gpu.num_cpus, gpu.postprocess_threads) == (4.0, 4)  # the CPUs per GPU
    half = plan_placement(_config(gpus_per_worker=0.5), {"CPU": 16.0, "GPU": 4.0}, local=True)
    assert (half.workers, half.postprocess_threads) == (8, 2)
    cpu = plan_placement(_config(), {"CPU": 8.0}, local=True)
    assert (cpu.num_cpus, cpu.postprocess_threads) == (1.0, 1)
    chosen = plan_placement(_config(cpus_per_worker=3), {"CPU": 16.0, "GPU": 4.0}, local=True)
    assert (chosen.num_cpus, chosen.postprocess_threads) == (3.0, 3)
    with pytest.raises(ValueError, match="2 CPU workers need 6 CPUs"):
        plan_placement(_config(workers=2, cpus_per_worker=3), {"CPU": 4.0}, local=True)
    with pytest.raises(UserError, match="cpus_per_worker: must be >= 1"):
        _config(cpus_per_worker=0)
