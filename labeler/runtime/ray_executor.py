"""Running a job's shards on Ray actors: the only module of the library that imports ray.

Each :class:`LabelWorker` actor loads the model and the method once, then processes many shards
(one GPU per actor by default, fractions allowed; CPU actors when there is no GPU). The driver
keeps :data:`SHARDS_IN_FLIGHT_PER_WORKER` shards on each ready actor, and an actor runs that many
calls at once (threads): the next shard reads ahead while the current one is on the model, and
takes the model as soon as the current one leaves it to finish its post-processing and commit
(see :class:`labeler.runtime.shard.ShardProcessor`). The driver, not the worker, writes a shard's
completion marker, after the worker's call has committed the shard's parts and stats.

Failures are classified by :class:`labeler.runtime.scheduler.ShardScheduler`: an exception raised
by the shard's code is an application error (bounded attempts, then the shard is recorded as
failed); a dead actor, a lost node or object is a system failure (the actor is replaced and its
shards requeued, bounded per shard so a poison shard cannot loop).

Without an address, a local Ray instance is started on 127.0.0.1 (no dashboard) and shut down at
the end; with ``--address`` the driver joins that cluster. When Ray is already initialised in this
process (a notebook, the tests), that session is used and left running.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labeler.config import JobConfig
from labeler.errors import StorageFaultError, UserError
from labeler.io.folders import Folder
from labeler.io.policy import InputPolicy
from labeler.io.retry import describe_disk_fault, disk_fault
from labeler.io.uris import redact_text, redact_uri
from labeler.runtime.postprocess import default_postprocess_threads
from labeler.runtime.run_folder import RunFolder
from labeler.runtime.scheduler import (
    READY,
    ShardScheduler,
    WorkersCannotStartError,
    WorkerSlot,
    cannot_start,
)

if TYPE_CHECKING:
    from typing_extensions import Self

logger = logging.getLogger(__name__)

#: Shards on each actor at once: one on the model, the next reading ahead (or the previous one
#: finishing its post-processing and commit).
SHARDS_IN_FLIGHT_PER_WORKER = 2
#: Application errors a shard may have before it is recorded as failed.
MAX_SHARD_ATTEMPTS = 3
#: Worker deaths a shard may cause before it is recorded as failed.
MAX_SHARD_LOSSES = 3
#: Workers of one slot that may die in a row before becoming ready; then the slot is retired
#: (and the run stops when no slot is left).
MAX_START_FAILURES = 3
#: Seconds between driver heartbeats (progress bar refresh, ``run/progress.json``).
HEARTBEAT_SECONDS = 1.0
#: Ray's logger that announces token authentication on a local instance's start.
RAY_TOKEN_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"
#: Object store of the local instance: only small stats travel through it.
LOCAL_OBJECT_STORE_BYTES = 512 * 1024**2
#: Environment the workers need that is not a secret. Credentials are never forwarded: on a local
#: instance workers inherit the driver's environment; a cluster's nodes bring their own.
FORWARDED_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_RESPONSE_CHECKSUM_VALIDATION",
    "AWS_REQUEST_CHECKSUM_CALCULATION",
    "HF_HUB_OFFLINE",
    "HF_HOME",
    "HF_ENDPOINT",
    "LABELER_CACHE",
    "LABELER_METHODS",  # method plug-ins (see labeler.methods.registry)
)


@dataclass(frozen=True)
class Placement:
    """How many workers, and what each one reserves."""

    workers: int
    num_gpus: float
    num_cpus: float
    #: post-processing threads of each worker (see :mod:`labeler.runtime.postprocess`)
    postprocess_threads: int = 1


@dataclass
class ExecutionReport:
    """What the executor did with the shards it was given."""

    done: list[str] = field(default_factory=list)
    failed: dict[str, dict] = field(default_factory=dict)
    categories: list[dict] | None = None
    workers: int = 0
    worker_deaths: int = 0
    retries: int = 0


class ShardEvents:
    """Callbacks the driver loop reports to (progress bar, heartbeat). No-ops by default."""

    def shard_done(self, shard_id: str, stats: dict) -> None:
        """A shard completed (its marker is written)."""

    def shard_failed(self, shard_id: str, failure: dict) -> None:
        """A shard failed after its retries (recorded under ``run/failed/``)."""

    def tick(self, workers_ready: int, workers: int) -> None:
        """Called about every :data:`HEARTBEAT_SECONDS`."""


_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def error_text(text: str, limit: int = 4000) -> str:
    """An error for logs and failure records: no terminal colours, no credentials, bounded."""
    return redact_text(_ANSI_ESCAPE.sub("", text))[-limit:]


# --------------------------------------------------------------------------------------------
# The worker
# --------------------------------------------------------------------------------------------


class LabelWorker:
    """A Ray actor: the model and the method, loaded once, applied to many shards.

    Args:
        config: the job (method, model, batch size, decoder limits).
        run_id: the run's fingerprint, recorded with every annotation.
        storage_options: fsspec options for inputs and output (kept in memory, never logged).
    """

    def __init__(self, config: JobConfig, run_id: str, storage_options: dict | None = None,
                 postprocess_threads: int = 1) -> None:
        from labeler.runtime.shard import ShardProcessor

        logging.getLogger("labeler").setLevel(logging.INFO)  # per-shard logs keep INFO records
        segmenter = config.build_segmenter()
        device = str(segmenter.device)
        self.info = {"host": socket.gethostname(), "pid": os.getpid(), "device": device}
        self.categories = segmenter.categories
        self.storage_options = storage_options
        self.processor = ShardProcessor(
            segmenter, config.batch_size, config.max_pixels, run_id, storage_options,
            worker=self.info, postprocess_threads=postprocess_threads,
            policy=InputPolicy.for_input(config.input, config.allow_protocols))
        self._outputs: dict[str, Folder] = {}

    def ready(self) -> dict:
        """Where this worker runs and what it emits (answered once the model is loaded)."""
        return {**self.info, "categories": self.categories}

    def process(self, output_uri: str, shard_id: str, attempt: int) -> dict:
        """Label one shard of the run at ``output_uri``; commit parts, stats and log."""
        output = self._outputs.get(output_uri)
        if output is None:
            output = self._outputs[output_uri] = Folder(output_uri, self.storage_options)
        return self.processor.process(output, shard_id, attempt)


# --------------------------------------------------------------------------------------------
# The Ray session
# --------------------------------------------------------------------------------------------


def _import_ray(local: bool):
    """Import ray; for a local instance, bind it to the loopback interface first."""
    if local:
        # Read when ray is imported: the node's address becomes 127.0.0.1, not the LAN address.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    return ray


class RaySession:
    """Joins ``address``, reuses an initialised session, or starts (and later stops) a local one."""

    def __init__(self, address: str | None) -> None:
        self.address = address
        self.ray = _import_ray(local=address is None)
        self.started = False
        self.local = address is None

    def __enter__(self) -> Self:
        ray = self.ray
        if ray.is_initialized():
            logger.info("using the Ray session already initialised in this process")
            self.local = _is_local_session(ray)
            return self
        common = {"include_dashboard": False, "log_to_driver": False,
                  "logging_level": logging.WARNING}
        if self.address is None:
            # A local instance turns on token auth by itself and says so on every start; the
            # notice tells a labeler user nothing (the instance listens on 127.0.0.1 only).
            logging.getLogger(RAY_TOKEN_NOTICE_LOGGER).setLevel(logging.ERROR)
            ray.init(address="local", num_cpus=os.cpu_count() or 1,
                     object_store_memory=LOCAL_OBJECT_STORE_BYTES, **common)
            logger.info("started a local Ray instance on 127.0.0.1")
        else:
            ray.init(address=self.address, **common)
            logger.info("joined the Ray cluster at %s", redact_uri(self.address))
        self.started = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.started:
            self.ray.shutdown()

    def resources(self) -> dict[str, float]:
        return dict(self.ray.cluster_resources())

    def worker_env(self) -> dict[str, str]:
        """Environment for the workers: non-secret settings; the code's location when local."""
        env = {name: os.environ[name] for name in FORWARDED_ENV if os.environ.get(name)}
        if self.local:
            # Workers must import the driver's copy of labeler (not another installed one).
            root = str(Path(__file__).resolve().parents[2])
            env["PYTHONPATH"] = os.pathsep.join(
                part for part in (root, os.environ.get("PYTHONPATH", "")) if part
            )
        return env


def _is_local_session(ray) -> bool:
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    return len(nodes) == 1 and nodes[0].get("NodeManagerAddress") in ("127.0.0.1", _own_address())


def _own_address() -> str:
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def plan_placement(config: JobConfig, resources: dict[str, float], local: bool) -> Placement:
    """Workers and their reservations for ``config`` on a cluster with ``resources``.

    GPU workers (``gpus_per_worker``, default 1) when the cluster has GPUs and the job does not
    ask for the CPU; otherwise CPU workers (default: one worker). Each worker reserves
    ``cpus_per_worker`` CPUs and runs that many post-processing threads; by default a GPU worker
    gets its share of the cluster's CPUs per GPU, a CPU worker one CPU (its model's thread plus
    one post-processing thread). On a local instance, asking for more than the machine has is an
    error rather than a wait.

    Raises:
        ValueError: a setting that cannot be satisfied.
    """
    gpus = float(resources.get("GPU", 0.0))
    cpus = float(resources.get("CPU", 1.0))
    if config.workers is not None and config.workers < 1:
        raise UserError("--workers must be >= 1")
    per_gpu = config.gpus_per_worker
    if per_gpu is not None and per_gpu < 0:
        raise UserError("--gpus-per-worker must be >= 0")
    per_cpu = config.cpus_per_worker
    on_cpu = (config.device or "").startswith("cpu") or per_gpu == 0
    if not on_cpu and (gpus > 0 or per_gpu):
        per_gpu = per_gpu or 1.0
        capacity = int(gpus / per_gpu + 1e-9)
        workers = config.workers or max(capacity, 1)
        if local and workers > capacity:
            raise UserError(
                f"{workers} workers with {per_gpu:g} GPU each need {workers * per_gpu:g} GPUs; "
                f"this machine has {gpus:g} (use --gpus-per-worker 0 for CPU workers)"
            )
        # A worker's share of the CPUs: CPUs per GPU times its GPUs.
        threads = default_postprocess_threads(per_cpu, int(cpus * per_gpu), gpus, gpu_worker=True)
        return Placement(workers=workers, num_gpus=per_gpu, num_cpus=float(threads),
                         postprocess_threads=threads)
    workers = config.workers or 1
    threads = default_postprocess_threads(per_cpu, int(cpus), gpus, gpu_worker=False)
    if local and workers * threads > cpus:
        raise UserError(f"{workers} CPU workers need {workers * threads} CPUs ({threads} each); "
                         f"this machine has {cpus:g}")
    return Placement(workers=workers, num_gpus=0.0, num_cpus=float(threads),
                     postprocess_threads=threads)


# --------------------------------------------------------------------------------------------
# The driver loop
# --------------------------------------------------------------------------------------------


def execute_shards(
    config: JobConfig,
    run: RunFolder,
    shard_ids: list[str],
    run_id: str,
    events: ShardEvents | None = None,
    storage_options: dict | None = None,
) -> ExecutionReport:
    """Process ``shard_ids`` on Ray workers; write completion markers and failure records.

    Raises:
        StorageFaultError: a worker met a disk fault (full, over quota, read-only, no
            permission): the run stops at once rather than failing every shard the same way.
        WorkersCannotStartError: workers keep dying before they are ready.
        ValueError: the placement cannot be satisfied.
    """
    events = events or ShardEvents()
    with RaySession(config.address) as session:
        placement = plan_placement(config, session.resources(), session.local)
        if not session.local and run.output.is_local:
            logger.warning("output %s is a local path: workers on other nodes cannot write it",
                           run.output.uri)
        actor_class = session.ray.remote(LabelWorker).options(
            num_gpus=placement.num_gpus,
            num_cpus=placement.num_cpus,
            max_restarts=0,
            max_task_retries=0,
            max_concurrency=SHARDS_IN_FLIGHT_PER_WORKER,
            runtime_env={"env_vars": session.worker_env()},
        )
        make_worker = lambda: actor_class.remote(config, run_id, storage_options,
                                                 placement.postprocess_threads)
        logger.info("%d workers (%g GPU, %g CPU, %d post-processing threads each) for %d shards",
                    placement.workers, placement.num_gpus, placement.num_cpus,
                    placement.postprocess_threads, len(shard_ids))
        driver = _Driver(session.ray, make_worker, placement.workers, run, shard_ids, events)
        return driver.run()


class _Driver:
    """Keeps every worker fed, settles finished calls, replaces dead workers."""

    def __init__(self, ray, make_worker: Callable[[], Any], workers: int, run: RunFolder,
                 shard_ids: list[str], events: ShardEvents) -> None:
        self.ray = ray
        self.make_worker = make_worker
        self.run_folder = run
        self.events = events
        self.scheduler = ShardScheduler(shard_ids, MAX_SHARD_ATTEMPTS, MAX_SHARD_LOSSES)
        self.slots = [WorkerSlot(index) for index in range(min(workers, max(len(shard_ids), 1)))]
        self.calls: dict[Any, WorkerSlot] = {}
        self.report = ExecutionReport(workers=len(self.slots))
        self.output_uri = run.output.uri

    def run(self) -> ExecutionReport:
        try:
            for slot in self.slots:
                self._start(slot)
            last_tick = 0.0
            while self._work_left():
                for slot in self.slots:
                    self._feed(slot)
                ready, _ = self.ray.wait(list(self.calls), num_returns=1, timeout=HEARTBEAT_SECONDS)
                for ref in ready:
                    self._settle(ref)
                if time.monotonic() - last_tick >= HEARTBEAT_SECONDS:
                    last_tick = time.monotonic()
                    self.events.tick(sum(slot.ready for slot in self.slots), len(self.slots))
        finally:
            for slot in self.slots:
                self._kill(slot)
        self.report.done = list(self.scheduler.done)
        self.report.failed = dict(self.scheduler.failed)
        self.report.retries = self.scheduler.requeued
        return self.report

    def _work_left(self) -> bool:
        busy = any(shard != READY for slot in self.slots for _, shard in slot.calls)
        return busy or self.scheduler.has_pending()

    def _start(self, slot: WorkerSlot) -> None:
        slot.handle = self.make_worker()
        slot.generation += 1
        slot.ready = False
        ref = slot.handle.ready.remote()
        slot.calls.append((ref, READY))
        self.calls[ref] = slot

    def _feed(self, slot: WorkerSlot) -> None:
        # Only ready workers get shards: a replacement for a worker on a lost node may wait for
        # resources indefinitely (until the autoscaler adds a node), and shards queued on it
        # would be held hostage while live workers sit idle.
        if not slot.ready or slot.handle is None:
            return
        while self.scheduler.has_pending() and slot.shards_in_flight() < SHARDS_IN_FLIGHT_PER_WORKER:
            shard_id = self.scheduler.take()
            ref = slot.handle.process.remote(self.output_uri, shard_id,
                                             self.scheduler.attempt_of(shard_id))
            slot.calls.append((ref, shard_id))
            self.calls[ref] = slot

    def _settle(self, ref) -> None:
        slot = self.calls.get(ref)
        if slot is None:
            return  # a call of a worker already replaced; its shard was requeued
        shard_id = next(shard for call, shard in slot.calls if call == ref)
        try:
            value = self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as error:
            self._forget(slot, ref)
            self._application_error(slot, shard_id, error)
        except self.ray.exceptions.RayError as error:
            self._worker_lost(slot, error)
        else:
            self._forget(slot, ref)
            self._succeeded(slot, shard_id, value)

    def _forget(self, slot: WorkerSlot, ref) -> None:
        del self.calls[ref]
        slot.calls = type(slot.calls)(call for call in slot.calls if call[0] != ref)

    def _succeeded(self, slot: WorkerSlot, shard_id: str, value: dict) -> None:
        if shard_id == READY:
            slot.ready = True
            slot.start_failures = 0
            if self.report.categories is None:
                self.report.categories = value["categories"]
                self.run_folder.write_categories(value["categories"])
            logger.info("worker %d ready: pid %s on %s, device %s", slot.index, value["pid"],
                        value["host"], value["device"])
            return
        self.run_folder.mark_done(shard_id)
        self.scheduler.succeeded(shard_id)
        self.events.shard_done(shard_id, value)

    def _application_error(self, slot: WorkerSlot, shard_id: str, error: Exception) -> None:
        fault = disk_fault(getattr(error, "cause", None) or error)
        if fault is not None:  # a full or read-only disk: every shard would fail the same way
            raise StorageFaultError(f"shard {shard_id}: {describe_disk_fault(fault)}")
        text = error_text(str(error))
        if shard_id == READY:  # ready() itself raised: treat the worker as unusable
            self._replace(slot, text)
            return
        last_line = (text.strip().splitlines() or ["?"])[-1]
        attempt = self.scheduler.record(shard_id).attempts + 1
        if self.scheduler.errored(shard_id, text):
            logger.warning("shard %s attempt %d failed (%s); retrying", shard_id, attempt, last_line)
            return
        failure = self.scheduler.failed[shard_id]
        logger.error("shard %s failed after %d attempts: %s", shard_id, attempt, last_line)
        self.run_folder.record_failure(shard_id, failure["error"], failure["attempts"])
        self.events.shard_failed(shard_id, failure)

    def _worker_lost(self, slot: WorkerSlot, error: Exception) -> None:
        text = error_text(f"{type(error).__name__}: {error}")
        self.report.worker_deaths += 1
        logger.warning("worker %d (generation %d) died: %s", slot.index, slot.generation,
                       text.strip().splitlines()[0] if text.strip() else type(error).__name__)
        self._replace(slot, text)

    def _replace(self, slot: WorkerSlot, error: str) -> None:
        """Requeue the slot's shards (charging the running one) and start a new worker."""
        for call, _ in slot.calls:
            self.calls.pop(call, None)
        for shard_id, charged in ShardScheduler.worker_died(slot, error):
            if not self.scheduler.lost(shard_id, error, charged):
                failure = self.scheduler.failed[shard_id]
                logger.error("shard %s failed: %s", shard_id, failure["error"].splitlines()[0])
                self.run_folder.record_failure(shard_id, failure["error"], failure["attempts"])
                self.events.shard_failed(shard_id, failure)
        self._kill(slot)
        if slot.start_failures >= MAX_START_FAILURES:
            self.slots.remove(slot)
            if not self.slots:
                raise cannot_start(slot, error)
            logger.error("worker %d retired: it died %d times before it was ready", slot.index,
                         slot.start_failures)
            return
        if self._work_left():
            self._start(slot)

    def _kill(self, slot: WorkerSlot) -> None:
        if slot.handle is None:
            return
        try:
            self.ray.kill(slot.handle, no_restart=True)
        except Exception as error:  # noqa: BLE001 - already dead, or the cluster is gone
            logger.debug("could not kill worker %d: %s", slot.index, error)
        slot.handle = None


__all__ = [
    "ExecutionReport",
    "LabelWorker",
    "Placement",
    "RaySession",
    "ShardEvents",
    "WorkersCannotStartError",
    "execute_shards",
    "plan_placement",
]
