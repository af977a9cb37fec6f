"""One driver per output: an exclusive lease on ``OUTPUT/run/lease.json``.

A driver takes the lease before it touches the output (before ``--overwrite`` clears anything)
and keeps it fresh with a heartbeat thread; it releases it on every exit path it controls. The
lease records who holds it (owner id, host, pid, command, start and heartbeat times, and a beat
``sequence`` the holder increments at every renewal).

Taking over (``docs/faults.md``, "The output lease"):

- the lease was last written more than ``stale_seconds`` ago by the store's clock (the lease
  file's modification time, stamped by the disk or object store, never the holder's own clock),
- a waiting driver (``--wait-lock``) saw the holder's beat sequence stand still for
  ``stale_seconds`` of its own monotonic clock (so no clock, skewed or not, keeps a dead holder's
  lease alive for a waiter),
- the holder ran on this host and its pid is gone (a driver killed here: known at once), or
- the lease cannot be read (empty, garbage, foreign): this module never leaves such a file (it
  publishes a lease whole or not at all), so nobody holds it; it is taken over with a warning
  naming the file.

Otherwise the second driver is refused with a message naming the holder, or waits for the lease
(``wait=True``, ``labeler run --wait-lock``), logging whom it waits for when it starts and every
minute; its wait ends when the holder releases the lease or goes silent.

Atomicity: on local disks the lease is written whole under a temporary name and published with a
hard link, which fails when the lease exists, so two drivers started together cannot both win and
a full disk leaves no lease behind. Object stores without conditional writes get
write-then-read-back: the later writer wins, and the earlier one finds a foreign owner at its next
check (every heartbeat and before merging) and stops with :class:`LeaseLostError` before it
commits anything run-wide.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass

from labeler.errors import UserError
from labeler.io.folders import Folder

logger = logging.getLogger(__name__)

LEASE_PATH = "run/lease.json"

#: Seconds between two heartbeats of the holder.
HEARTBEAT_SECONDS = 10.0

#: A lease whose heartbeat is older than this may be taken over.
STALE_SECONDS = 60.0

#: Seconds between two "still waiting" reports of a driver waiting for the lease.
WAIT_REPORT_SECONDS = 60.0


class LeaseHeldError(UserError):
    """Another live driver holds the output."""


class LeaseLostError(UserError):
    """This driver's lease was taken over (its heartbeat went stale, or a concurrent writer won)."""


@dataclass(frozen=True)
class LeaseRecord:
    """What ``run/lease.json`` holds."""

    owner: str
    host: str
    pid: int
    command: str
    started: float
    heartbeat: float
    sequence: int = 0

    def describe(self, written: float | None = None) -> str:
        """Who holds the lease; ``written``: when the store last wrote it (epoch seconds)."""
        last = "" if written is None else f", last renewed {time.time() - written:.0f} s ago"
        return (f"pid {self.pid} on {self.host} (beat {self.sequence}{last}, started "
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.started))} by its clock)")


@dataclass(frozen=True)
class LeaseState:
    """The lease file as found: its record, or why it cannot be read, and when it was written.

    ``written`` is the file's modification time (epoch seconds) by the store's clock, None when
    the store gives none; ``raw`` is the file's bytes (None when there is no file).
    """

    record: LeaseRecord | None
    raw: bytes | None
    written: float | None
    problem: str | None = None

    @property
    def exists(self) -> bool:
        return self.raw is not None


def inspect_lease(output: Folder) -> LeaseState:
    """The lease file of ``output``: absent, readable, or unreadable (with the reason)."""
    try:
        raw = output.read_bytes(LEASE_PATH)
        written = output.modified(LEASE_PATH)
    except FileNotFoundError:
        return LeaseState(None, None, None)
    try:
        data = json.loads(raw)
        fields = LeaseRecord.__dataclass_fields__
        record = LeaseRecord(**{key: data[key] for key in fields if key in data})
    except (ValueError, KeyError, TypeError) as error:
        problem = "it is empty" if not raw.strip() else f"it is not a lease ({error})"
        return LeaseState(None, raw, written, problem)
    return LeaseState(record, raw, written)


def read_lease(output: Folder) -> LeaseRecord | None:
    """The recorded lease, or None when there is none or it cannot be read."""
    return inspect_lease(output).record


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lease_is_live(record: LeaseRecord, stale_seconds: float = STALE_SECONDS,
                  now: float | None = None, written: float | None = None) -> bool:
    """Whether ``record``'s holder may still be working (see the module docstring).

    Args:
        record: the lease.
        stale_seconds: age after which the holder is gone.
        now: this reader's time (epoch seconds; default: now).
        written: when the store wrote the lease (its mtime, the store's clock). Without it the
            holder's own ``heartbeat`` stands in (older leases, stores without times).
    """
    now = time.time() if now is None else now
    last_beat = record.heartbeat if written is None else written
    if now - last_beat > stale_seconds:
        return False
    return record.host != socket.gethostname() or pid_alive(record.pid)


def state_is_live(state: LeaseState, stale_seconds: float = STALE_SECONDS) -> bool:
    """Whether the lease file names a holder that may still be working."""
    return state.record is not None and lease_is_live(state.record, stale_seconds,
                                                      written=state.written)


class _SilenceWatch:
    """How long a lease has stood still, by this process's monotonic clock."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.raw: bytes | None = None
        self.since = 0.0

    def silent_for(self, raw: bytes | None) -> float:
        """Seconds since the lease last changed (0 when it changed now)."""
        now = self.clock()
        if raw != self.raw:
            self.raw, self.since = raw, now
        return now - self.since


class OutputLease:
    """The exclusive lease of one driver on one output.

    Args:
        output: the job's output folder.
        stale_seconds: heartbeat age after which another driver may take over.
        heartbeat_seconds: seconds between renewals by the background thread.
        clock: this driver's monotonic clock (seconds), used to time a holder's silence.
    """

    def __init__(self, output: Folder, stale_seconds: float = STALE_SECONDS,
                 heartbeat_seconds: float = HEARTBEAT_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.output = output
        self.stale_seconds = stale_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.clock = clock
        self.owner = uuid.uuid4().hex
        self._started = time.time()
        self._sequence = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost: str | None = None

    # -- taking and giving back ------------------------------------------------------------
    def acquire(self, wait: bool = False, poll_seconds: float = 2.0) -> None:
        """Take the lease, taking over a gone holder's; start the heartbeat.

        Raises:
            LeaseHeldError: a live driver holds it and ``wait`` is false.
        """
        silence = _SilenceWatch(self.clock)
        waiting_since = reported = None
        while True:
            state = inspect_lease(self.output)
            silent = silence.silent_for(state.raw)
            if state_is_live(state, self.stale_seconds) and silent <= self.stale_seconds:
                if not wait:
                    raise LeaseHeldError(
                        f"{self.output.uri} is being written by another labeler driver: "
                        f"{state.record.describe(state.written)}; wait for it (--wait-lock), stop it, or use "
                        "another --output"
                    )
                now = self.clock()
                waiting_since = now if waiting_since is None else waiting_since
                if reported is None or now - reported >= WAIT_REPORT_SECONDS:
                    reported = now
                    logger.info("waiting %.0f s so far for the lease on %s, held by %s; the wait "
                                "ends when it is released or its beats stop for %.0f s",
                                now - waiting_since, self.output.uri, state.record.describe(state.written),
                                self.stale_seconds)
                time.sleep(poll_seconds)
                continue
            if state.exists:
                self._take_over(state, silent)
            if self._create():
                break
            if not wait:  # another driver created it between our read and our write
                holder = read_lease(self.output)
                raise LeaseHeldError(
                    f"{self.output.uri} was just taken by another labeler driver"
                    + (f": {holder.describe()}" if holder else "")
                )
        self._thread = threading.Thread(target=self._beat, name="labeler-lease", daemon=True)
        self._thread.start()

    def _take_over(self, state: LeaseState, silent: float) -> None:
        """Remove a gone holder's lease (or an unreadable one), unless it changed meanwhile."""
        where = self.output.uri_of(LEASE_PATH)
        if state.record is None:
            logger.warning("taking over %s: %s, so no driver holds it", where, state.problem)
        elif silent > self.stale_seconds:
            logger.warning("taking over %s from a driver whose beats stopped %.0f s ago: %s",
                           where, silent, state.record.describe(state.written))
        else:
            logger.warning("taking over %s from a driver that is gone: %s", where,
                           state.record.describe(state.written))
        if inspect_lease(self.output).raw == state.raw:
            self.output.remove(LEASE_PATH)

    def release(self) -> None:
        """Stop the heartbeat and remove the lease if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        holder = read_lease(self.output)
        if holder is not None and holder.owner == self.owner:
            self.output.remove(LEASE_PATH)

    # -- holding -------------------------------------------------------------------------
    def check(self) -> None:
        """Raise :class:`LeaseLostError` when this driver no longer holds the lease."""
        if self._lost:
            raise LeaseLostError(self._lost)
        holder = read_lease(self.output)
        if holder is None or holder.owner != self.owner:
            self._lost = (f"the lease on {self.output.uri} was taken over"
                          + (f" by {holder.describe()}" if holder else ""))
            raise LeaseLostError(self._lost)

    def _record(self) -> LeaseRecord:
        return LeaseRecord(
            owner=self.owner, host=socket.gethostname(), pid=os.getpid(),
            command=" ".join(sys.argv[:2]) or "labeler", started=self._started,
            heartbeat=time.time(), sequence=self._sequence,
        )

    def _payload(self) -> bytes:
        return json.dumps(asdict(self._record()), indent=1, sort_keys=True).encode()

    def _create(self) -> bool:
        """Publish a new lease whole; False when another driver's appeared first.

        Raises:
            OSError: the lease cannot be written (a full or read-only disk); nothing is left.
        """
        if self.output.is_local:
            return self.output.write_bytes_exclusive(LEASE_PATH, self._payload())
        self.output.write_bytes(LEASE_PATH, self._payload())
        holder = read_lease(self.output)
        return holder is not None and holder.owner == self.owner

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            try:
                self.check()
                self._sequence += 1
                self.output.write_bytes(LEASE_PATH, self._payload())
            except LeaseLostError as error:
                logger.error("%s", error)
                return
            except Exception as error:  # noqa: BLE001 - a missed beat is retried at the next one
                logger.warning("could not renew the output lease: %s", error)
