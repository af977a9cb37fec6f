"""Time per pipeline stage, accumulated across batches, without stalling the device."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class StageTimer:
    """Accumulates seconds per named stage.

    On the CPU a stage's time is its host wall time. Once CUDA is in use a stage is bracketed by
    two CUDA events on the current stream instead: nothing waits for the device at a stage
    boundary (the host goes on queueing work while the GPU runs), and the stage's time is the
    device time between its events, resolved when :attr:`seconds` is read (that read waits for
    the last stage's end event; the shard path reads it after its batches, whose results it has
    already copied to the host).

    Args:
        synchronize: profiling: synchronise CUDA at every stage boundary (the old behaviour; each
            stage then holds exactly its own work's host-and-device time, at the cost of the
            CPU/GPU overlap).
    """

    def __init__(self, synchronize: bool = False) -> None:
        self.synchronize = synchronize
        self._seconds: dict[str, float] = defaultdict(float)
        self._pending: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []
        self._lock = threading.Lock()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        events = _cuda_in_use() and not self.synchronize
        if self.synchronize:
            _synchronize()
        if events:
            start_event = torch.cuda.Event(enable_timing=True)
            start_event.record()
        start = time.perf_counter()
        try:
            yield
        finally:
            if events:
                end_event = torch.cuda.Event(enable_timing=True)
                end_event.record()
                with self._lock:
                    self._pending.append((name, start_event, end_event))
            else:
                if self.synchronize:
                    _synchronize()
                with self._lock:
                    self._seconds[name] += time.perf_counter() - start

    @property
    def seconds(self) -> dict[str, float]:
        """Seconds per stage so far (waits for the device only if CUDA stages are pending)."""
        with self._lock:
            pending, self._pending = self._pending, []
            for name, start_event, end_event in pending:
                end_event.synchronize()
                self._seconds[name] += start_event.elapsed_time(end_event) / 1000
            return self._seconds

    def merge(self, other: dict[str, float]) -> None:
        with self._lock:
            for name, seconds in other.items():
                self._seconds[name] += seconds


def _cuda_in_use() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def _synchronize() -> None:
    if _cuda_in_use():
        torch.cuda.synchronize()
