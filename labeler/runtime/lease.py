"""One driver per output: an exclusive lease on ``OUTPUT/run/lease.json``.

A driver takes the lease before it touches the output (before ``--overwrite`` clears anything)
and keeps it fresh with a heartbeat thread; it releases it on every exit path it controls. The
lease records who holds it (owner id, host, pid, command, start and heartbeat times).

Taking over (``docs/architecture.md``, "Run folder integrity"):

- the holder's heartbeat is older than ``stale_seconds`` (a driver killed on another machine), or
- the holder ran on this host and its pid is gone (a driver killed here: known at once).

Otherwise the second driver is refused with a message naming the holder, or waits for the lease
(``wait=True``, ``labeler run --wait-lock``).

Atomicity: on local disks the lease file is created with ``O_EXCL``, so two drivers started
together cannot both win. Object stores without conditional writes get write-then-read-back: the
later writer wins, and the earlier one finds a foreign owner at its next check (every heartbeat
and before merging) and stops with :class:`LeaseLostError` before it commits anything run-wide.
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
from dataclasses import asdict, dataclass

from labeler.errors import UserError
from labeler.io.folders import Folder

logger = logging.getLogger(__name__)

LEASE_PATH = "run/lease.json"

#: Seconds between two heartbeats of the holder.
HEARTBEAT_SECONDS = 10.0

#: A lease whose heartbeat is older than this may be taken over.
STALE_SECONDS = 60.0


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

    def describe(self, now: float | None = None) -> str:
        age = (now if now is not None else time.time()) - self.heartbeat
        return (f"pid {self.pid} on {self.host} (heartbeat {age:.0f} s ago, "
                f"started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.started))})")


def read_lease(output: Folder) -> LeaseRecord | None:
    """The recorded lease, or None when there is none (or it is unreadable, e.g. half-written)."""
    try:
        data = json.loads(output.read_bytes(LEASE_PATH))
        return LeaseRecord(**{key: data[key] for key in LeaseRecord.__dataclass_fields__})
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        return None


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
                  now: float | None = None) -> bool:
    """Whether ``record``'s holder may still be working (see the module docstring)."""
    now = time.time() if now is None else now
    if now - record.heartbeat > stale_seconds:
        return False
    return record.host != socket.gethostname() or pid_alive(record.pid)


class OutputLease:
    """The exclusive lease of one driver on one output.

    Args:
        output: the job's output folder.
        stale_seconds: heartbeat age after which another driver may take over.
        heartbeat_seconds: seconds between renewals by the background thread.
    """

    def __init__(self, output: Folder, stale_seconds: float = STALE_SECONDS,
                 heartbeat_seconds: float = HEARTBEAT_SECONDS) -> None:
        self.output = output
        self.stale_seconds = stale_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.owner = uuid.uuid4().hex
        self._started = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost: str | None = None

    # -- taking and giving back ------------------------------------------------------------
    def acquire(self, wait: bool = False, poll_seconds: float = 2.0) -> None:
        """Take the lease, taking over a dead holder's; start the heartbeat.

        Raises:
            LeaseHeldError: a live driver holds it and ``wait`` is false.
        """
        while True:
            holder = read_lease(self.output)
            if holder is not None and lease_is_live(holder, self.stale_seconds):
                if not wait:
                    raise LeaseHeldError(
                        f"{self.output.uri} is being written by another labeler driver: "
                        f"{holder.describe()}; wait for it (--wait-lock), stop it, or use another "
                        "--output"
                    )
                time.sleep(poll_seconds)
                continue
            if holder is not None:
                logger.warning("taking over the output from a driver that is gone: %s",
                               holder.describe())
                self.output.remove(LEASE_PATH)
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
            heartbeat=time.time(),
        )

    def _payload(self) -> bytes:
        return json.dumps(asdict(self._record()), indent=1, sort_keys=True).encode()

    def _create(self) -> bool:
        """Write a new lease; False when another driver's appeared first."""
        if self.output.is_local:
            path = self.output.path(LEASE_PATH)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            try:
                descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(self._payload())
            return True
        self.output.write_bytes(LEASE_PATH, self._payload())
        holder = read_lease(self.output)
        return holder is not None and holder.owner == self.owner

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            try:
                self.check()
                self.output.write_bytes(LEASE_PATH, self._payload())
            except LeaseLostError as error:
                logger.error("%s", error)
                return
            except Exception as error:  # noqa: BLE001 - a missed beat is retried at the next one
                logger.warning("could not renew the output lease: %s", error)
