"""The driver loop of every executor: feed workers shards, settle their calls, record outcomes.

An executor runs a job's shards on workers; what a worker is differs (a Ray actor in
:mod:`labeler.runtime.ray_executor`, an object of this process in
:mod:`labeler.runtime.local_executor`), the loop does not. :class:`Driver` keeps
:data:`SHARDS_IN_FLIGHT_PER_WORKER` shards on every ready worker, and settles each finished call
through :class:`labeler.runtime.scheduler.ShardScheduler`:

* a value: the worker committed the shard's parts and stats
  (:meth:`labeler.runtime.shard.ShardProcessor.process`); the driver then writes the shard's
  completion marker, so a crash at any point leaves the shard to be redone;
* an exception raised by the shard's code: an application error (bounded attempts, then the
  shard is recorded under ``run/failed/``); a disk fault stops the run at once;
* a lost worker (only an executor with separate worker processes reports one): its shards are
  requeued, the running one charged, and a new worker is started.

The executor-specific part is a :class:`Workers` object: how a worker starts, how a call is sent,
waited for, and what its outcome was, and how a worker is stopped.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from labeler.errors import StorageFaultError
from labeler.io.retry import describe_disk_fault, disk_fault
from labeler.io.uris import redact_text
from labeler.runtime.liveness import StallWatch, worker_key
from labeler.runtime.run_folder import RunFolder
from labeler.runtime.scheduler import READY, ShardScheduler, WorkerSlot, cannot_start

logger = logging.getLogger(__name__)

#: Shards on each worker at once: one on the model, the next reading ahead (or the previous one
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


@dataclass
class ExecutionReport:
    """What the executor did with the shards it was given."""

    done: list[str] = field(default_factory=list)
    failed: dict[str, dict] = field(default_factory=dict)
    categories: list[dict] | None = None
    workers: int = 0
    worker_deaths: int = 0
    retries: int = 0
    stalls: int = 0


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


@dataclass(frozen=True)
class Outcome:
    """How one call ended: a value, an application error, or the loss of its worker.

    Attributes:
        value: what the call returned (``ready()``'s facts, or a shard's stats).
        raised: the exception the call's own code raised (an application error), else None.
        text: the error as the executor describes it (with its traceback), when not a value.
        lost: the worker is gone (a system failure): its calls never finish.
    """

    value: Any = None
    raised: BaseException | None = None
    text: str = ""
    lost: bool = False


class Workers(Protocol):
    """What the driver loop needs from an executor. Calls are hashable ids, handles opaque."""

    def start(self) -> Any:
        """Start a worker (it loads the model in the background); returns its handle."""

    def ready(self, handle: Any) -> Any:
        """Send the first call, answered with ``{host, pid, device, categories}`` once loaded."""

    def process(self, handle: Any, output_uri: str, shard_id: str, attempt: int,
                read_uris: dict[str, str]) -> Any:
        """Send one shard (:meth:`labeler.runtime.shard.ShardProcessor.process`'s arguments)."""

    def wait(self, calls: list, timeout: float) -> list:
        """The calls among ``calls`` that finished, waiting at most ``timeout`` seconds for one."""

    def outcome(self, call: Any) -> Outcome:
        """How a finished call ended."""

    def kill(self, handle: Any) -> None:
        """Stop a worker (it may already be dead); calls it still runs are abandoned."""


class Driver:
    """Keeps every worker fed, settles finished calls, replaces lost workers.

    Args:
        workers: the executor's side (see :class:`Workers`).
        count: workers to run (at most one per shard).
        run: the run folder (markers, failure records, categories).
        shard_ids: the shards to process, in plan order.
        events: progress callbacks.
        stall_timeout: seconds a busy worker may go without a sign of life before it is killed
            and replaced (:mod:`labeler.runtime.liveness`); None: never (an executor that
            cannot stop a worker).
        read_uris: the full URIs of input entries stored redacted (redacted -> full), handed to
            the workers with each shard that has some, never written.
    """

    def __init__(self, workers: Workers, count: int, run: RunFolder, shard_ids: list[str],
                 events: ShardEvents, stall_timeout: float | None = None,
                 read_uris: dict[str, str] | None = None) -> None:
        self.workers = workers
        self.run_folder = run
        self.events = events
        self.scheduler = ShardScheduler(shard_ids, MAX_SHARD_ATTEMPTS, MAX_SHARD_LOSSES)
        self.slots = [WorkerSlot(index) for index in range(min(count, max(len(shard_ids), 1)))]
        self.calls: dict[Any, WorkerSlot] = {}
        self.report = ExecutionReport(workers=len(self.slots))
        self.output_uri = run.output.uri
        self.stall_timeout = stall_timeout
        self.read_uris = read_uris or {}
        self.watch = StallWatch(run.output, stall_timeout) if stall_timeout else None

    def run(self) -> ExecutionReport:
        """Process every shard (or record it as failed); the workers are stopped at the end.

        Raises:
            StorageFaultError: a worker met a disk fault (full, over quota, read-only, no
                permission): the run stops rather than failing every shard the same way.
            WorkersCannotStartError: workers keep dying before they are ready.
        """
        try:
            for slot in self.slots:
                self._start(slot)
            last_tick = 0.0
            while self._work_left():
                for slot in self.slots:
                    self._feed(slot)
                for call in self.workers.wait(list(self.calls), HEARTBEAT_SECONDS):
                    self._settle(call)
                self._replace_stalled()
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
        slot.handle = self.workers.start()
        slot.generation += 1
        slot.ready = False
        call = self.workers.ready(slot.handle)
        slot.calls.append((call, READY))
        self.calls[call] = slot

    def _feed(self, slot: WorkerSlot) -> None:
        # Only ready workers get shards: a replacement for a worker on a lost node may wait for
        # resources indefinitely (until the autoscaler adds a node), and shards queued on it
        # would be held hostage while live workers sit idle.
        if not slot.ready or slot.handle is None:
            return
        if self.watch is not None and not slot.shards_in_flight():
            self.watch.alive(slot.index)  # an idle worker's silence is not a stall
        while self.scheduler.has_pending() and slot.shards_in_flight() < SHARDS_IN_FLIGHT_PER_WORKER:
            shard_id = self.scheduler.take()
            call = self.workers.process(slot.handle, self.output_uri, shard_id,
                                        self.scheduler.attempt_of(shard_id),
                                        self._read_uris_of(shard_id))
            slot.calls.append((call, shard_id))
            self.calls[call] = slot

    def _read_uris_of(self, shard_id: str) -> dict[str, str]:
        """The full URIs of the shard's entries that are stored redacted (usually none)."""
        if not self.read_uris:
            return {}
        entries = self.run_folder.read_manifest(shard_id)
        return {entry["uri"]: self.read_uris[entry["uri"]] for entry in entries
                if entry["uri"] in self.read_uris}

    def _settle(self, call: Any) -> None:
        slot = self.calls.get(call)
        if slot is None:
            return  # a call of a worker already replaced; its shard was requeued
        shard_id = next(shard for sent, shard in slot.calls if sent == call)
        if self.watch is not None:
            self.watch.alive(slot.index)
        outcome = self.workers.outcome(call)
        if outcome.lost:
            self._worker_lost(slot, outcome)
            return
        self._forget(slot, call)
        if outcome.raised is not None:
            self._application_error(slot, shard_id, outcome)
        else:
            self._succeeded(slot, shard_id, outcome.value)

    def _forget(self, slot: WorkerSlot, call: Any) -> None:
        del self.calls[call]
        slot.calls = type(slot.calls)(sent for sent in slot.calls if sent[0] != call)

    def _succeeded(self, slot: WorkerSlot, shard_id: str, value: dict) -> None:
        if shard_id == READY:
            slot.ready = True
            slot.start_failures = 0
            if self.watch is not None:
                self.watch.alive(slot.index, worker_key(value))
            if self.report.categories is None:
                self.report.categories = value["categories"]
                self.run_folder.write_categories(value["categories"])
            logger.info("worker %d ready: pid %s on %s, device %s", slot.index, value["pid"],
                        value["host"], value["device"])
            return
        self.run_folder.mark_done(shard_id)
        self.scheduler.succeeded(shard_id)
        self.events.shard_done(shard_id, value)

    def _application_error(self, slot: WorkerSlot, shard_id: str, outcome: Outcome) -> None:
        fault = disk_fault(outcome.raised)
        if fault is not None:  # a full or read-only disk: every shard would fail the same way
            raise StorageFaultError(f"shard {shard_id}: {describe_disk_fault(fault)}")
        text = error_text(outcome.text)
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

    def _worker_lost(self, slot: WorkerSlot, outcome: Outcome) -> None:
        text = error_text(outcome.text)
        self.report.worker_deaths += 1
        logger.warning("worker %d (generation %d) died: %s", slot.index, slot.generation,
                       text.strip().splitlines()[0] if text.strip() else "?")
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

    def _replace_stalled(self) -> None:
        """Kill and replace the busy workers that showed no sign of life for the stall timeout."""
        if self.watch is None:
            return
        busy = {slot.index: slot for slot in self.slots
                if slot.ready and slot.handle is not None and slot.shards_in_flight()}
        for index, seconds in self.watch.stalled(list(busy)):
            slot = busy[index]
            running = next(shard for _, shard in slot.calls if shard != READY)
            message = (f"worker {slot.index} showed no sign of life for {seconds:.0f} s "
                       f"(--stall-timeout {self.stall_timeout:g}) while running shard {running}: "
                       "declared lost, killed and replaced")
            logger.warning("%s", message)
            self.report.stalls += 1
            self.run_folder.record_stall(running, {"seconds": round(seconds, 1),
                                                   "stall_timeout": self.stall_timeout,
                                                   "worker": slot.index, "at": time.time()})
            self._replace(slot, message)

    def _kill(self, slot: WorkerSlot) -> None:
        if self.watch is not None:
            self.watch.forget(slot.index)
        if slot.handle is None:
            return
        try:
            self.workers.kill(slot.handle)
        except Exception as error:  # noqa: BLE001 - already dead, or the cluster is gone
            logger.debug("could not kill worker %d: %s", slot.index, error)
        slot.handle = None
