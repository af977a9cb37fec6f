"""The driver of ``labeler run``: claim the output, plan, process pending shards, merge.

One driver per output: the driver holds the output's lease (:mod:`labeler.runtime.lease`) while
it works. Re-running the same command resumes: completed shards (those with a marker under
``run/done/``) are skipped, unless their committed parts are damaged (missing, or not matching
the digests and counts in their stats: :mod:`labeler.runtime.integrity`) or they hold failures
that may heal (``retry_failed``, :mod:`labeler.output.failures`): those are redone. Every part is
hashed again before the merge. Images the input gained since the plan was made are appended as
new shards (:func:`labeler.runtime.plan.extend_plan`), and with ``verify_inputs`` the done shards
holding images whose input changed since they were read are redone (same image ids; their parts
replaced). Shards run on Ray workers
(:mod:`labeler.runtime.ray_executor`, the default) or in this process
(:mod:`labeler.runtime.local_executor`, ``executor = "local"``); a shard that keeps failing is
recorded under ``run/failed/`` and the run then ends without merging, with a non-zero status, so
a re-run retries exactly those shards.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from labeler.config import JobConfig
from labeler.errors import StorageFaultError, UserError
from labeler.io.folders import Folder
from labeler.io.listing import SkippedEntries, folder_root, iter_inputs
from labeler.io.reading import with_identities
from labeler.io.retry import describe_disk_fault, disk_fault
from labeler.io.uris import InputError
from labeler.output.coco_files import DEFAULT_MAX_ANNOTATIONS
from labeler.output.merge import merge_outputs
from labeler.output.names import ImageNamer
from labeler.output.reader import OutputReader, with_used_categories
from labeler.runtime import local_executor, ray_executor
from labeler.runtime.executor import ExecutionReport, ShardEvents
from labeler.runtime.integrity import damaged_shards, retryable_failures
from labeler.runtime.lease import LeaseHeldError, OutputLease
from labeler.runtime.merge_record import record_merge, unchanged_merge
from labeler.runtime.plan import PlanChanges, extend_plan, plan_run
from labeler.runtime.preflight import preflight
from labeler.runtime.progress import DriverProgress
from labeler.runtime.rollup import RollUpWriter
from labeler.runtime.run_folder import RunFolder
from labeler.runtime.status import done_shard_totals

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
    stalls: int = 0
    """Workers replaced because they showed no sign of life for ``stall_timeout``."""
    images_per_second: float | None = None
    new_images: int = 0
    """Images the input gained since the previous run on this output (labeled by this one)."""
    removed_images: int = 0
    """Images of an earlier run that the input no longer lists (kept in the output)."""
    retryable_failed: int = 0
    """Failed images that may succeed on a re-run (storage errors, out of memory)."""
    changed_images: int = 0
    """Images whose input changed since they were labeled (``verify_inputs``): relabeled."""

    @property
    def permanently_failed(self) -> int:
        """Failed images a re-run would fail again (bad files, the method's errors)."""
        return self.failed - self.retryable_failed

    @property
    def complete(self) -> bool:
        """Every input image accounted for (labeled or recorded as failed)."""
        return not self.failed_shards


#: ``executor`` -> how it runs shards (same driver loop, same commit protocol).
EXECUTORS = {"ray": ray_executor.execute_shards, "local": local_executor.execute_shards}


def execute_shards(config: JobConfig, run: RunFolder, shard_ids: list[str], run_id: str,
                   events: ShardEvents, storage_options: dict | None,
                   read_uris: dict[str, str] | None = None) -> ExecutionReport:
    """Process ``shard_ids`` with the job's executor; markers and failure records written."""
    return EXECUTORS[config.executor](config, run, shard_ids, run_id, events, storage_options,
                                      read_uris=read_uris)


@dataclass
class InputFacts:
    """What listing the input told the driver beside the items, filled as they are consumed."""

    read_uris: dict[str, str] = field(default_factory=dict)
    """The full URIs of entries stored redacted (redacted -> full): in memory only."""
    skipped: SkippedEntries = field(default_factory=SkippedEntries)
    """The hidden files and folders a folder walk skipped."""


def input_items(config: JobConfig, storage_options: dict | None = None,
                facts: InputFacts | None = None, identify: bool = False) -> Iterator[dict]:
    """The collection as plan items: ``{"uri", "ref"}`` per image, in order, and ``identity``
    where the listing gives it (:mod:`labeler.io.identity`).

    The input is checked now (it exists, its kind is known); listing itself stays lazy. Entries
    whose URI holds secrets are listed redacted; with ``facts``, the full URI of each and the
    hidden entries skipped are recorded there as the items are consumed. With ``identify``,
    the entries the listing gives no identity are looked at (a HEAD, a stat, or their bytes).
    """
    facts = facts if facts is not None else InputFacts()
    refs = iter_inputs(config.input, storage_options=storage_options, skipped=facts.skipped)

    def items() -> Iterator[dict]:
        listed = with_identities(refs, storage_options=storage_options) if identify else refs
        for ref in listed:
            if ref.read_uri is not None:
                facts.read_uris[ref.uri] = ref.read_uri
            item = {"uri": ref.uri, "ref": ref.to_dict()}
            if ref.identity is not None:
                item["identity"] = ref.identity
            yield item

    return items()


def run_job(config: JobConfig, storage_options: dict | None = None, progress: bool = True) -> RunSummary:
    """Run (or resume) a labeling job: plan, label the pending shards (on Ray workers, or in
    this process with ``executor = "local"``), merge.

    The driver holds the output's lease (:class:`~labeler.runtime.lease.OutputLease`) from before
    it touches the output (before ``--overwrite`` clears anything) until it returns or raises.

    Raises:
        UserError: bad settings, resources or input, refused before the output is touched and
            before any worker starts (as is a changed configuration on resume).
        LeaseHeldError: another live driver holds the output (and ``config.wait_lock`` is false).
        LeaseLostError: another driver took the output over; nothing was merged.
        StorageFaultError: the output's storage refuses writes (full, read-only, no permission).
        WorkersCannotStartError: the workers cannot start.
    """
    started = time.perf_counter()
    preflight(config, storage_options)
    output = Folder(config.output, storage_options)
    try:
        facts = InputFacts()  # the secrets of the input's URIs stay in memory, never stored
        items = input_items(config, storage_options, facts,
                            identify=config.verify_inputs is True and RunFolder(output).has_plan())
        items = itertools.chain([next(items)], items)  # an empty input fails before any write
        image_root = folder_root(config.input, storage_options=storage_options)
    except InputError as error:
        raise UserError(str(error)) from None
    lease = OutputLease(output)
    with _disk_faults_refused():
        try:
            lease.acquire(wait=config.wait_lock)
        except LeaseHeldError as error:
            raise LeaseHeldError(f"refusing --overwrite: {error}" if config.overwrite
                                 else str(error)) from None
        try:
            summary = _run_holding_lease(config, RunFolder(output), lease, items, image_root,
                                         storage_options, progress, facts)
        finally:
            _release(lease)
    summary.seconds = time.perf_counter() - started
    return summary


@contextmanager
def _disk_faults_refused() -> Iterator[None]:
    """A disk fault at the driver (full, over quota, read-only, no permission) becomes one
    :class:`StorageFaultError` line; any other OSError stays what it is."""
    try:
        yield
    except OSError as error:
        fault = disk_fault(error)
        if fault is None:
            raise
        raise StorageFaultError(describe_disk_fault(fault)) from error


def _run_holding_lease(config: JobConfig, run: RunFolder, lease: OutputLease,
                       items: Iterator[dict], image_root: str | None,
                       storage_options: dict | None, progress: bool,
                       facts: InputFacts) -> RunSummary:
    output = run.output
    try:
        resumed = run.claim(config, image_root=image_root)
        changes = PlanChanges()
        if run.has_plan():
            compare = run.done_shards() if _compares_inputs(config, image_root) else set()
            plan, changes = extend_plan(run, items, config.shard_size, ImageNamer(image_root),
                                        compare)
            _report_changes(changes, output.uri)
            for shard_id in changes.changed_shards:
                run.unmark_done(shard_id)
        else:
            plan = plan_run(run, items, config.shard_size, ImageNamer(image_root))
    except InputError as error:
        raise UserError(str(error)) from None
    shards = plan["shards"]
    shard_ids = [shard["shard_id"] for shard in shards]
    done = run.done_shards()
    done -= set(_redo_on_resume(run, shards, done, config.retry_failed))
    pending = [shard["shard_id"] for shard in shards if shard["shard_id"] not in done]
    logger.info(
        "%s: %d images in %d shards, %d to do%s",
        "resuming" if resumed else "starting", plan["n_images"], len(shard_ids), len(pending),
        f"; {facts.skipped.describe()}" if facts.skipped.count else "",
    )
    listing = {"hidden_skipped": facts.skipped.count, "hidden_examples": facts.skipped.examples}
    if listing != run.read_listing():  # a finished output on read-only storage stays unwritten
        run.write_listing(listing)
    rollup = RollUpWriter(run, shards, done)
    events = DriverProgress(run, plan["n_images"],
                            [shard for shard in shards if shard["shard_id"] not in done],
                            enabled=progress, rollup=rollup)
    report = ExecutionReport()
    try:
        with events.logging_above_bar():
            if pending:
                report = execute_shards(config, run, pending, _run_id(output), events,
                                        storage_options, facts.read_uris)
            if not report.failed:
                _redo_damaged(config, run, shards, report, events, storage_options,
                              facts.read_uris)
    except BaseException:
        events.close("interrupted")
        output.remove_temporary()  # the workers are gone: what they were writing is litter
        raise
    counts = {"images": 0, "labeled": 0, "failed": 0, "annotations": 0, "failure_reasons": {}}
    if not report.failed:
        lease.check()  # another driver took over: merge nothing
        max_annotations = config.coco_max_annotations or DEFAULT_MAX_ANNOTATIONS
        layout = {"coco_max_annotations": max_annotations}
        merged, damage = (None, {}) if pending else unchanged_merge(output, shard_ids, layout)
        for relative, problem in damage.items():
            logger.warning("%s: %s; merging again from the verified shard parts",
                           output.uri_of(relative), problem)
        if merged is not None:  # nothing redone: the outputs stand (read-only storage works)
            logger.info("%s is complete and unchanged: outputs left as they are", output.uri)
            counts = merged
        else:
            categories = report.categories or run.read_categories() or _categories_of(config)
            supercategory = config.spec.open_categories(config.settings)
            if supercategory is not None:  # the annotations name some categories themselves
                used = OutputReader.of_shards(output, shard_ids, categories, {}).used_categories()
                categories = with_used_categories(categories, used, supercategory)
            output.remove_temporary()  # e.g. a coco.json.tmp-* of a merge that was killed
            rollup.fill()  # groups whose roll-up a killed driver never wrote
            counts = merge_outputs(output, shard_ids, categories, _coco_info(config, output),
                                   max_annotations)
            record_merge(output, shard_ids, counts, layout)
    else:  # nothing merged: say what the shards that are done hold
        totals = done_shard_totals(run, shards, run.done_shards())
        counts = {key: totals[key] for key in
                  ("images", "labeled", "failed", "annotations", "failure_reasons")}
    events.close("failed" if report.failed else "complete")
    return RunSummary(
        output=config.output,
        shards=len(shard_ids),
        shards_processed=len(report.done),
        failed_shards=report.failed,
        seconds=0.0,
        worker_deaths=report.worker_deaths,
        retries=report.retries,
        stalls=report.stalls,
        images_per_second=events.rate(),
        new_images=changes.new_images,
        removed_images=changes.removed_images,
        changed_images=changes.changed_images,
        retryable_failed=0 if report.failed else done_shard_totals(
            run, shards, set(shard_ids))["retryable_failures"],
        **counts,
    )


def _compares_inputs(config: JobConfig, image_root: str | None) -> bool:
    """Whether a re-run compares the input's identities with the recorded ones: always with
    ``verify_inputs``, never without, and by default for a folder (``image_root``), whose
    listing gives them for free (on S3 and local disks: :mod:`labeler.io.identity`)."""
    if config.verify_inputs is None:
        return image_root is not None
    return config.verify_inputs


def _redo_on_resume(run: RunFolder, shards: list[dict], done: set[str],
                    retry_failed: bool) -> list[str]:
    """Done shards to label again: damaged parts (sizes and counts checked), and with
    ``retry_failed`` those holding failures that may heal. Their done markers are removed."""
    redo = []
    for shard_id, problem in damaged_shards(run, shards, done, digests=False).items():
        logger.warning("shard %s: %s, redoing", shard_id, problem)
        redo.append(shard_id)
    if retry_failed:
        for shard in shards:
            shard_id = shard["shard_id"]
            if shard_id in done and shard_id not in redo:
                healable = retryable_failures(run, shard_id)
                if healable:
                    logger.info("shard %s: %d images failed in a way a re-run may heal "
                                "(storage, memory), redoing (--no-retry-failed keeps them)",
                                shard_id, healable)
                    redo.append(shard_id)
    for shard_id in redo:
        run.unmark_done(shard_id)
    return redo


def _redo_damaged(config: JobConfig, run: RunFolder, shards: list[dict], report: ExecutionReport,
                  events: DriverProgress, storage_options: dict | None,
                  read_uris: dict[str, str]) -> None:
    """Hash every committed part before merging; redo the shards whose parts are damaged, once.

    A shard still damaged after its redo is recorded as failed (so nothing is merged).
    """
    damaged = damaged_shards(run, shards, run.done_shards())
    if not damaged:
        return
    for shard_id, problem in damaged.items():
        logger.warning("shard %s: %s, redoing", shard_id, problem)
        run.unmark_done(shard_id)
    again = execute_shards(config, run, list(damaged), _run_id(run.output), events,
                           storage_options, read_uris)
    report.done += again.done
    report.failed.update(again.failed)
    report.worker_deaths += again.worker_deaths
    report.retries += again.retries
    report.stalls += again.stalls
    redone = [shard for shard in shards if shard["shard_id"] in damaged]
    for shard_id, problem in damaged_shards(run, redone, run.done_shards()).items():
        error = f"shard {shard_id}: {problem} after it was redone"
        run.unmark_done(shard_id)
        run.record_failure(shard_id, error, attempts=1)
        report.failed[shard_id] = {"error": error, "attempts": 1}


def _release(lease: OutputLease) -> None:
    """Give the lease back; a storage error here must not hide the run's own outcome."""
    try:
        lease.release()
    except Exception as error:  # noqa: BLE001 - a stale lease is taken over by the next driver
        logger.warning("could not remove the output lease: %s", error)


def _report_changes(changes: PlanChanges, output: str) -> None:
    if changes.new_images:
        logger.info("%d new images in the input since the last run on %s: labeling them (%d new "
                    "shards, image ids from %d)", changes.new_images, output,
                    len(changes.new_shards), changes.new_shards[0]["first_image_id"])
    elif changes.checked:
        logger.info("no new images in the input since the last run on %s", output)
    if changes.removed_images:
        logger.warning("%d images of the earlier run are no longer in the input (kept in the "
                       "output): %s%s", changes.removed_images, ", ".join(changes.removed_examples),
                       ", ..." if changes.removed_images > len(changes.removed_examples) else "")
    if changes.changed_images:
        logger.warning("%d images changed in the input since they were labeled: relabeling them "
                       "(%d shards, same image ids): %s%s", changes.changed_images,
                       len(changes.changed_shards), "; ".join(changes.changed_examples),
                       "; ..." if changes.changed_images > len(changes.changed_examples) else "")


def _run_id(output: Folder) -> str:
    return output.read_json("run/config.json")["fingerprint"]


def _categories_of(config: JobConfig) -> list[dict]:
    """The method's categories, known without loading a model."""
    return config.spec.categories(config.settings)


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
