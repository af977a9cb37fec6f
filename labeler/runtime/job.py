"""The driver of ``labeler run``: claim the output, plan, process pending shards, merge.

This module runs shards in-process, one after another; it is the embedded default until the Ray
executor takes over the same steps. A shard that raises is retried up to ``max_attempts`` times,
then recorded as failed with its error; the run then ends with a non-zero status.
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass

from tqdm.auto import tqdm

from labeler.config import JobConfig
from labeler.io.inputs import iter_inputs
from labeler.io.storage import Folder
from labeler.output.merge import merge_outputs
from labeler.runtime.plan import plan_run
from labeler.runtime.run_folder import RunFolder

logger = logging.getLogger(__name__)

MAX_SHARD_ATTEMPTS = 3


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

    @property
    def complete(self) -> bool:
        """Every input image accounted for (labeled or recorded as failed)."""
        return not self.failed_shards


def input_items(config: JobConfig, storage_options: dict | None = None):
    """The collection as plan items: ``{"uri", "ref"}`` per image, in order."""
    for ref in iter_inputs(config.input, storage_options=storage_options):
        yield {"uri": ref.uri, "ref": ref.to_dict()}


def run_job(config: JobConfig, storage_options: dict | None = None, progress: bool = True) -> RunSummary:
    """Run (or resume) a labeling job in this process."""
    started = time.perf_counter()
    output = Folder(config.output, storage_options)
    run = RunFolder(output)
    resumed = run.claim(config)
    plan = plan_run(run, input_items(config, storage_options), config.shard_size)
    shard_ids = [shard["shard_id"] for shard in plan["shards"]]
    done = run.done_shards()
    pending = [shard for shard in plan["shards"] if shard["shard_id"] not in done]
    logger.info(
        "%s: %d images in %d shards, %d to do",
        "resuming" if resumed else "starting", plan["n_images"], len(shard_ids), len(pending),
    )
    failed: dict[str, dict] = {}
    processor = None
    bar = tqdm(total=plan["n_images"], initial=plan["n_images"] - sum(s["n_images"] for s in pending),
               unit="img", disable=not progress, dynamic_ncols=True)
    failures_so_far = 0
    for shard in pending:
        if processor is None:
            processor = _make_processor(config, output, storage_options)
        stats = _process_with_retries(processor, output, run, shard["shard_id"])
        if stats is None:
            failed[shard["shard_id"]] = run.failed_shards().get(shard["shard_id"], {})
        else:
            failures_so_far += stats["failed"]
        bar.update(shard["n_images"])
        bar.set_postfix(failed=failures_so_far)
    bar.close()
    counts = {"images": 0, "labeled": 0, "failed": 0, "annotations": 0}
    if not failed:
        categories = processor.segmenter.categories if processor else _categories_of(config)
        counts = merge_outputs(output, shard_ids, categories, _coco_info(config, output))
    return RunSummary(
        output=config.output,
        shards=len(shard_ids),
        shards_processed=len(pending),
        failed_shards=failed,
        seconds=time.perf_counter() - started,
        **counts,
    )


def _make_processor(config: JobConfig, output: Folder, storage_options: dict | None):
    from labeler.methods.registry import build_segmenter
    from labeler.runtime.shard import ShardProcessor

    run_id = output.read_json("run/config.json")["fingerprint"]
    return ShardProcessor(build_segmenter(config), config.batch_size, config.max_pixels, run_id,
                          storage_options)


def _process_with_retries(processor, output: Folder, run: RunFolder, shard_id: str) -> dict | None:
    for attempt in range(1, MAX_SHARD_ATTEMPTS + 1):
        try:
            stats = processor.process(output, shard_id)
        except Exception as error:  # noqa: BLE001 - classified and recorded, never swallowed
            logger.error("shard %s attempt %d failed: %s", shard_id, attempt, error)
            if attempt == MAX_SHARD_ATTEMPTS:
                run.record_failure(shard_id, "".join(traceback.format_exception(error))[-4000:], attempt)
                return None
            continue
        run.mark_done(shard_id)
        return stats
    return None


def _categories_of(config: JobConfig) -> list[dict]:
    if config.method == "diffseg":
        from labeler.methods.diffseg import DiffSeg

        return DiffSeg.categories
    if config.method == "slime":
        from labeler.slime.embedding_set import EmbeddingSet

        return EmbeddingSet.load(config.embeddings).categories()
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
    }

