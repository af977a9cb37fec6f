"""Liveness: a worker's signs of life, and the driver's verdict on a worker that shows none.

A worker publishes a heartbeat with its progress count (a shard starts, an image is read, a batch
leaves the model) to ``run/alive/<worker>.json`` every ``stall_timeout / 4`` seconds
(:class:`LifeSigns`). A stopped or frozen process (SIGSTOP, a node cut off, a hang that holds
the interpreter) stops it; a single thread blocked in a call that releases the interpreter (a
read that never returns) does not, and is bounded by the storage layer's timeouts instead.

The driver (:class:`StallWatch`, executor-agnostic) keeps, per busy worker, when it last saw a
sign of life: the worker became ready or was handed work while idle, one of its calls finished, or
its count moved. It looks at the counts every ``stall_timeout / 4`` seconds of its own monotonic
clock (no clock of another host is compared), and a worker that showed none for ``stall_timeout``
seconds is stalled: the executor kills and replaces it and its shards are requeued, the running
one charged one loss of the shard's existing budget (:mod:`labeler.runtime.scheduler`).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from labeler.io.folders import Folder

logger = logging.getLogger(__name__)

ALIVE_DIR = "run/alive"


def worker_key(info: dict) -> str:
    """The file name of a worker's signs of life: ``<host>-<pid>`` (safe characters only)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"{info.get('host', '?')}-{info.get('pid', '?')}")


def alive_path(key: str) -> str:
    return f"{ALIVE_DIR}/{key}.json"


class LifeSigns:
    """The worker's side: count progress, and publish a heartbeat with the count.

    A daemon thread publishes ``{"beat", "progress"}`` every ``interval`` seconds while the
    process runs, so the file changes as long as the worker is alive, whether or not its shards
    move; a stopped or frozen process (SIGSTOP, a lost node, a hang holding the interpreter)
    stops it.

    Args:
        key: :func:`worker_key` of this worker.
        interval: seconds between two publications (a quarter of the stall timeout).
    """

    def __init__(self, key: str, interval: float) -> None:
        self.key = key
        self.interval = interval
        self.progress = 0
        self._output: Folder | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self, output: Folder) -> None:
        """One sign of progress (an image read, a batch labeled) of a shard of ``output``."""
        with self._lock:
            self.progress += 1
            self._output = output
            if self._thread is None:
                self._thread = threading.Thread(target=self._publish, name="labeler-life",
                                                daemon=True)
                self._thread.start()

    def close(self) -> None:
        """Stop publishing (the worker is done)."""
        self._stop.set()

    def _publish(self) -> None:
        beat = 0
        while not self._stop.is_set():
            beat += 1
            with self._lock:
                output, progress = self._output, self.progress
            try:
                output.write_bytes(alive_path(self.key),
                                   json.dumps({"beat": beat, "progress": progress}).encode())
            except OSError as error:  # a missed publication is retried at the next one
                logger.warning("could not publish signs of life: %s", error)
            self._stop.wait(self.interval)


@dataclass
class _Watched:
    key: str | None
    seen: bytes | None
    since: float


class StallWatch:
    """The driver's side: which busy workers showed no sign of life for ``stall_timeout``.

    Workers are identified by the caller's slot numbers; ``key`` is their :func:`worker_key`,
    known once they are ready.

    Args:
        output: the run's output folder (where workers publish).
        stall_timeout: seconds without a sign of life after which a worker is stalled.
        clock: the driver's monotonic clock.
    """

    def __init__(self, output: Folder, stall_timeout: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.output = output
        self.stall_timeout = stall_timeout
        self.clock = clock
        self.check_every = stall_timeout / 4
        self._watched: dict[int, _Watched] = {}
        self._checked = clock()

    def alive(self, slot: int, key: str | None = None) -> None:
        """A sign of life of ``slot`` seen by the driver itself (ready, a call settled, fed)."""
        current = self._watched.get(slot)
        key = key if key is not None else (current.key if current else None)
        seen = current.seen if current and current.key == key else None
        self._watched[slot] = _Watched(key, seen, self.clock())

    def forget(self, slot: int) -> None:
        """``slot``'s worker is gone (replaced or stopped)."""
        self._watched.pop(slot, None)

    def stalled(self, busy: list[int]) -> list[tuple[int, float]]:
        """``(slot, seconds)`` for each of the ``busy`` slots silent for ``stall_timeout``.

        Reads the published counts at most every ``stall_timeout / 4`` seconds.
        """
        now = self.clock()
        if now - self._checked < self.check_every:
            return []
        self._checked = now
        verdicts = []
        for slot in busy:
            watched = self._watched.get(slot)
            if watched is None or watched.key is None:
                continue
            try:
                seen = self._read(watched.key)
            except OSError as error:  # storage trouble is not the worker's silence
                logger.warning("could not read the signs of life of worker %s: %s", watched.key,
                               error)
                continue
            if seen is not None and seen != watched.seen:
                watched.seen, watched.since = seen, now
            elif now - watched.since >= self.stall_timeout:
                verdicts.append((slot, now - watched.since))
        return verdicts

    def _read(self, key: str) -> bytes | None:
        try:
            return self.output.read_bytes(alive_path(key))
        except FileNotFoundError:
            return None
