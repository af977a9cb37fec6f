"""Running a job's shards in this process (``executor = "local"``): no Ray, same guarantees.

The same driver loop as on Ray (:class:`labeler.runtime.executor.Driver`: the scheduler, the
application-error retries, the completion marker written by the driver after the worker
committed, the failure records, the progress events), with workers that are objects of this
process: each a :class:`labeler.runtime.worker.ShardWorker` with
:data:`~labeler.runtime.executor.SHARDS_IN_FLIGHT_PER_WORKER` threads, so the next shard reads
ahead while the current one is on the model, as on a Ray actor. The model loads in a worker's
thread, so the heartbeat keeps ticking meanwhile.

A worker here cannot die apart from the driver, so there are no worker losses; an exception in
the shard's code is an application error as on Ray, and a model that cannot load is a worker
that could not start (after a few tries the run ends with
:class:`~labeler.runtime.scheduler.WorkersCannotStartError`). Stopping a worker lets the shards it
is running finish (their threads cannot be interrupted) and drops the ones not started.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures

from labeler.config import JobConfig
from labeler.runtime.executor import (
    SHARDS_IN_FLIGHT_PER_WORKER,
    Driver,
    ExecutionReport,
    Outcome,
    ShardEvents,
)
from labeler.runtime.run_folder import RunFolder
from labeler.runtime.worker import ShardWorker


def execute_shards(config: JobConfig, run: RunFolder, shard_ids: list[str], run_id: str,
                   events: ShardEvents | None = None,
                   storage_options: dict | None = None,
                   read_uris: dict[str, str] | None = None) -> ExecutionReport:
    """Process ``shard_ids`` in this process; write completion markers and failure records.

    ``config.workers`` workers (default one), each loading the model once.

    Raises:
        StorageFaultError: a shard met a disk fault (full, over quota, read-only, no
            permission): the run stops at once rather than failing every shard the same way.
        WorkersCannotStartError: the model cannot be loaded.
    """
    workers = InProcessWorkers(
        lambda: ShardWorker(config, run_id, storage_options, config.cpus_per_worker))
    driver = Driver(workers, config.workers or 1, run, shard_ids, events or ShardEvents(),
                    read_uris=read_uris)
    return driver.run()


class LocalWorker:
    """One in-process worker: its threads, and its :class:`ShardWorker` once loaded."""

    def __init__(self) -> None:
        self.threads = ThreadPoolExecutor(SHARDS_IN_FLIGHT_PER_WORKER,
                                          thread_name_prefix="labeler-worker")
        self.worker: ShardWorker | None = None


class InProcessWorkers:
    """Workers as objects of this process (see :class:`labeler.runtime.executor.Workers`);
    calls are futures.

    Args:
        make_worker: loads the model and the method (called in the worker's thread).
    """

    def __init__(self, make_worker: Callable[[], ShardWorker]) -> None:
        self.make_worker = make_worker

    def start(self) -> LocalWorker:
        return LocalWorker()

    def ready(self, handle: LocalWorker) -> Future:
        def load() -> dict:
            handle.worker = self.make_worker()
            return handle.worker.ready()

        return handle.threads.submit(load)

    def process(self, handle: LocalWorker, output_uri: str, shard_id: str, attempt: int,
                read_uris: dict[str, str]) -> Future:
        # The driver sends shards only to a worker whose ready() call returned.
        return handle.threads.submit(handle.worker.process, output_uri, shard_id, attempt,
                                     read_uris)

    def wait(self, calls: list, timeout: float) -> list:
        done, _ = wait_futures(calls, timeout=timeout, return_when=FIRST_COMPLETED)
        return list(done)

    def outcome(self, call: Future) -> Outcome:
        """The value, or what the call's code raised (with its traceback) as an application error."""
        error = call.exception()
        if error is None:
            return Outcome(value=call.result())
        return Outcome(raised=error, text="".join(traceback.format_exception(error)))

    def kill(self, handle: LocalWorker) -> None:
        handle.threads.shutdown(wait=True, cancel_futures=True)
        if handle.worker is not None:
            handle.worker.close()
            handle.worker = None
