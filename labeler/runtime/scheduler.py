"""The driver's bookkeeping, without Ray: which shard runs next, and what an outcome means.

Two kinds of trouble are counted apart:

* an **application error** (the shard's code raised) costs the shard one of its
  ``max_attempts``; after the last one the shard is recorded as failed with its error;
* a **lost** shard (its worker died, its node went away) is requeued without costing an attempt,
  but a shard that keeps taking its worker down (``max_losses`` times) is recorded as failed too,
  so a poison input cannot loop forever.

Workers are slots with a FIFO of calls in flight: a worker runs its calls in order, so when it
dies, the oldest call was the one running. Only that shard is charged with the loss; the calls
queued behind it are requeued free. A replacement worker that dies before it ever became ready
counts as a start failure; after a few in a row the slot is retired, and when no worker is left
the run ends (:class:`WorkersCannotStartError`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from labeler.errors import UserError

#: The call every new worker answers first (model loaded, ready for shards).
READY = "<ready>"


class WorkersCannotStartError(UserError):
    """Workers keep dying before they are ready (the model cannot load, no resources...)."""


@dataclass
class ShardRecord:
    """What happened to one shard so far in this run."""

    attempts: int = 0
    losses: int = 0
    last_error: str = ""


@dataclass
class WorkerSlot:
    """One worker position: its current handle and the calls sent to it, oldest first."""

    index: int
    handle: Any = None
    generation: int = 0
    ready: bool = False
    start_failures: int = 0
    calls: deque = field(default_factory=deque)  # of (call id, shard id or READY)

    def shards_in_flight(self) -> int:
        return sum(1 for _, shard in self.calls if shard != READY)


class ShardScheduler:
    """The queue of pending shards and the verdicts on their outcomes.

    Args:
        shard_ids: the shards to process, in plan order.
        max_attempts: application errors a shard may have before it is recorded as failed.
        max_losses: worker deaths a shard may cause before it is recorded as failed.
    """

    def __init__(self, shard_ids: list[str], max_attempts: int = 3, max_losses: int = 3) -> None:
        if max_attempts < 1 or max_losses < 1:
            raise ValueError("max_attempts and max_losses must be >= 1")
        self.queue: deque[str] = deque(shard_ids)
        self.max_attempts = max_attempts
        self.max_losses = max_losses
        self.records: dict[str, ShardRecord] = {}
        self.done: list[str] = []
        self.failed: dict[str, dict] = {}
        self.requeued = 0

    def has_pending(self) -> bool:
        return bool(self.queue)

    def take(self) -> str:
        """The next shard to send (the caller checked :meth:`has_pending`)."""
        return self.queue.popleft()

    def attempt_of(self, shard_id: str) -> int:
        """1-based number of the attempt about to run (application errors so far + 1)."""
        return self.record(shard_id).attempts + 1

    def record(self, shard_id: str) -> ShardRecord:
        return self.records.setdefault(shard_id, ShardRecord())

    def succeeded(self, shard_id: str) -> None:
        self.done.append(shard_id)

    def errored(self, shard_id: str, error: str) -> bool:
        """An application error. Returns True when the shard is queued again."""
        record = self.record(shard_id)
        record.attempts += 1
        record.last_error = error
        if record.attempts >= self.max_attempts:
            self.failed[shard_id] = {"error": error, "attempts": record.attempts,
                                     "losses": record.losses}
            return False
        self._requeue(shard_id)
        return True

    def lost(self, shard_id: str, error: str, charged: bool) -> bool:
        """The shard's worker died. ``charged``: the shard was running (not merely queued).

        Returns True when the shard is queued again.
        """
        record = self.record(shard_id)
        if charged:
            record.losses += 1
            record.last_error = error
            if record.losses >= self.max_losses:
                self.failed[shard_id] = {
                    "error": f"its worker died {record.losses} times while processing it "
                             f"(a crash or memory exhaustion caused by this shard?); last: {error}",
                    "attempts": record.attempts,
                    "losses": record.losses,
                }
                return False
        self._requeue(shard_id)
        return True

    def _requeue(self, shard_id: str) -> None:
        self.requeued += 1
        self.queue.append(shard_id)

    @staticmethod
    def worker_died(slot: WorkerSlot, error: str) -> list[tuple[str, bool]]:
        """Empty a dead worker's calls; return ``(shard, charged)`` for each shard it held.

        A worker that died before it was ready adds one to ``slot.start_failures``.
        """
        calls = list(slot.calls)
        slot.calls.clear()
        if not slot.ready:
            slot.start_failures += 1
        shards = [shard for _, shard in calls if shard != READY]
        running = calls[0][1] if calls else None
        return [(shard, shard == running) for shard in shards]


def cannot_start(slot: WorkerSlot, error: str) -> WorkersCannotStartError:
    """The error that ends a run whose workers keep dying before they are ready."""
    cause = (error.strip().splitlines() or ["?"])[-1]
    return WorkersCannotStartError(
        f"workers died {slot.start_failures} times before they were ready: {cause}\n"
        f"last error:\n{error}"
    )
