"""The driver of ``labeler run``: claim the output, plan, process pending shards on Ray, merge.

Re-running the same command resumes: completed shards (those with a marker under ``run/done/``)
are skipped. Shards run on Ray workers (:mod:`labeler.runtime.ray_executor`); a shard that keeps
failing is recorded under ``run/failed/`` and the run then ends without merging, with a non-zero
status, so a re-run retries exactly those shards.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from labeler.config import JobConfig
from labeler.io.inputs import InputError, folder_root, iter_inputs
from labeler.io.storage import Folder
from labeler.output.merge import merge_outputs
from labeler.output.names import ImageNamer
from labeler.runtime.plan import plan_run
from labeler.runtime.progress import DriverProgress
from labeler.runtime.ray_executor import ExecutionReport, execute_shards
from labeler.runtime.run_folder import RunFolder

logger = logging.getLogger(__name__)


@dataclass
class RunSummary:
    """What a finished (or partly failed) run produced."""

    output: str
    images: int
    labeled: int
    failed: int
    annotations: int
    shards: int
    shards_processed: int
    failed_shards: dict[str, dict]
    seconds: float
    failure_reasons: dict[str, int] = field(default_factory=dict)
    worker_deaths: int = 0
    retries: int = 0
    images_per_second: float | None = None

    @property
    def complete(self) -> bool:
        """Every input image accounted for (labeled or recorded as failed)."""
        return not self.failed_shards


def input_items(config: JobConfig, storage_options: dict | None = None) -> Iterator[dict]:
    """The collection as plan items: ``{"uri", "ref"}`` per image, in order.

    The input is checked now (it exists, its kind is known); listing itself stays lazy.
    """
    refs = iter_inputs(config.input, storage_options=storage_options)
    return ({"uri": ref.uri, "ref": ref.to_dict()} for ref in refs)


def run_job(config: JobConfig, storage_options: dict | None = None, progress: bool = True) -> RunSummary:
    """Run (or resume) a labeling job: plan, label the pending shards on Ray workers, merge.

    Raises:
        ValueError: bad settings or input (including a changed configuration on resume).
        RuntimeError: the workers cannot start.
    """
    started = time.perf_counter()
    output = Folder(config.output, storage_options)
    run = RunFolder(output)
    config = _preflight(config, storage_options)
    try:
        items = input_items(config, storage_options)  # fails before the output is touched
        image_root = folder_root(config.input, storage_options=storage_options)
        resumed = run.claim(config, image_root=image_root)
        plan = plan_run(run, items, config.shard_size, ImageNamer(image_root))
    except InputError as error:
        raise ValueError(str(error)) from error
    shard_ids = [shard["shard_id"] for shard in plan["shards"]]
    done = run.done_shards()
    pending = [shard for shard in plan["shards"] if shard["shard_id"] not in done]
    logger.info(
        "%s: %d images in %d shards, %d to do",
        "resuming" if resumed else "starting", plan["n_images"], len(shard_ids), len(pending),
    )
    events = DriverProgress(run, plan["n_images"], pending, enabled=progress)
    report = ExecutionReport()
    try:
        with events.logging_above_bar():
            if pending:
                report = execute_shards(config, run, [s["shard_id"] for s in pending],
                                        _run_id(output), events, storage_options)
    except BaseException:
        events.close("interrupted")
        raise
    counts = {"images": 0, "labeled": 0, "failed": 0, "annotations": 0, "failure_reasons": {}}
    if not report.failed:
        categories = report.categories or run.read_categories() or _categories_of(config)
        counts = merge_outputs(output, shard_ids, categories, _coco_info(config, output))
    events.close("failed" if report.failed else "complete")
    return RunSummary(
        output=config.output,
        shards=len(shard_ids),
        shards_processed=len(report.done),
        failed_shards=report.failed,
        seconds=time.perf_counter() - started,
        worker_deaths=report.worker_deaths,
        retries=report.retries,
        images_per_second=events.rate(),
        **counts,
    )


def _run_id(output: Folder) -> str:
    return output.read_json("run/config.json")["fingerprint"]


def _preflight(config: JobConfig, storage_options: dict | None) -> JobConfig:
    """Method checks that need files (before the output is touched); may complete the config."""
    if config.method == "diffews":
        from labeler.methods.diffews import factory

        return factory.preflight(config, storage_options)
    return config


def _categories_of(config: JobConfig) -> list[dict]:
    if config.method == "diffseg":
        from labeler.methods.diffseg.segmenter import DiffSeg

        return DiffSeg.categories
    if config.method == "slime":
        from labeler.methods.slime.embedding_set import EmbeddingSet

        return EmbeddingSet.load(config.embeddings).categories()
    if config.method == "diffews":
        from labeler.methods.diffews import factory

        return factory.categories(config)
    raise ValueError(f"no categories known for {config.method}")


def _coco_info(config: JobConfig, output: Folder) -> dict:
    recorded = output.read_json("run/config.json")
    return {
        "description": f"labeler {config.method} pseudo-labels",
        "method": config.method,
        "model": config.model_name,
        "run_id": recorded["fingerprint"],
        "date_created": recorded["created"],
        "labeler_version": recorded["labeler_version"],
        # where consumers find the images named by file_name (None: manifest/Parquet inputs,
        # whose names are stable names and whose sources are in each image's coco_url)
        "image_root": recorded.get("image_root"),
    }
