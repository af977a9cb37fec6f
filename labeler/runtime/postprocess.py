"""Post-processing off the model's path: a worker's pool of host threads, results in order.

The model's thread hands each image's raw output to :class:`PostProcessPool` (relabelling, the
resize to the image, mask encoding and the rows run there: numpy and pycocotools release the GIL)
and goes on with the next batch. :class:`OrderedResults` keeps one shard's jobs in submission
order and bounds how many are outstanding: when the pool is behind, the model's thread waits for
the oldest job (backpressure), so a slow host cannot pile up raw outputs in memory.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")


def default_postprocess_threads(cpus_per_worker: int | None, cpus: int | None, gpus: float,
                                gpu_worker: bool) -> int:
    """Post-processing threads of one worker (what it also reserves as CPUs).

    ``cpus_per_worker`` when given; otherwise, for a GPU worker, ``cpus`` divided by ``gpus``
    (the model's thread mostly waits for the device), at least one; and one thread for a CPU
    worker (its model's thread already keeps a core busy).
    """
    if cpus_per_worker is not None:
        return max(1, int(cpus_per_worker))
    if gpu_worker and gpus > 0:
        return max(1, int((cpus or os.cpu_count() or 1) / gpus))
    return 1


class PostProcessPool:
    """A fixed set of host threads shared by the shards a worker runs.

    Args:
        threads: how many jobs run at once (>= 1).
    """

    def __init__(self, threads: int) -> None:
        if threads < 1:
            raise ValueError("a post-processing pool needs at least one thread")
        self.threads = threads
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="labeler-post")

    def results(self, limit: int) -> OrderedResults:
        """A new in-order queue of jobs on this pool, at most ``limit`` outstanding."""
        return OrderedResults(self._executor, limit)

    def close(self) -> None:
        """Finish the running jobs and stop the threads."""
        self._executor.shutdown(wait=True)


class OrderedResults(Generic[T]):
    """One shard's jobs, their results taken in submission order.

    Args:
        executor: where the jobs run.
        limit: outstanding jobs (submitted, not yet taken) above which :meth:`submit` waits
            for the oldest one.
    """

    def __init__(self, executor: ThreadPoolExecutor, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self._executor = executor
        self._limit = limit
        self._pending: deque[Future] = deque()
        self._taken: deque[T] = deque()
        #: seconds the submitting thread waited for the pool (backpressure and the final drain)
        self.waited = 0.0

    def submit(self, job: Callable[..., T], *args: object) -> None:
        """Run ``job(*args)`` on the pool; waits while ``limit`` jobs are outstanding.

        ``job`` should turn its own errors into a result: an exception it raises is raised again
        when its result is taken.
        """
        self._pending.append(self._executor.submit(job, *args))
        while len(self._pending) > self._limit:
            self._take_oldest()

    def put(self, value: T) -> None:
        """A result known already (an image that failed before the model), kept in order."""
        future: Future = Future()
        future.set_result(value)
        self._pending.append(future)

    def ready(self) -> Iterator[T]:
        """The results available now without waiting, in submission order."""
        while self._pending and self._pending[0].done():
            self._taken.append(self._pending.popleft().result())
        while self._taken:
            yield self._taken.popleft()

    def drain(self) -> Iterator[T]:
        """Every remaining result, in submission order, waiting for the jobs still running."""
        while self._pending:
            self._take_oldest()
        while self._taken:
            yield self._taken.popleft()

    def cancel(self) -> None:
        """Drop the jobs not yet started and wait for the running ones (after an error)."""
        for future in self._pending:
            future.cancel()
        for future in self._pending:
            if not future.cancelled():
                future.exception()
        self._pending.clear()
        self._taken.clear()

    def _take_oldest(self) -> None:
        started = time.perf_counter()
        future = self._pending.popleft()
        try:
            self._taken.append(future.result())
        finally:
            self.waited += time.perf_counter() - started
