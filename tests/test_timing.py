"""StageTimer: host wall time on the CPU; CUDA events without synchronisation once CUDA is in use
(simulated here with fake events, so it runs on the CPU); synchronisation only when profiling."""

from __future__ import annotations

import threading
from typing import ClassVar

import pytest
import torch

from labeler import timing
from labeler.timing import StageTimer


class FakeEvent:
    """A CUDA event on a fake clock: ``record`` stamps the clock's time."""

    clock: ClassVar[list[float]] = [0.0]
    synchronized: ClassVar[list[FakeEvent]] = []

    def __init__(self, enable_timing: bool = False) -> None:
        assert enable_timing
        self.at = None

    def record(self) -> None:
        self.at = FakeEvent.clock[0]

    def synchronize(self) -> None:
        FakeEvent.synchronized.append(self)

    def elapsed_time(self, end: FakeEvent) -> float:
        return (end.at - self.at) * 1000  # milliseconds, as CUDA's


@pytest.fixture
def fake_cuda(monkeypatch):
    """CUDA 'in use' with fake events; a synchronize() call is counted."""
    calls = []
    FakeEvent.clock[0] = 0.0
    FakeEvent.synchronized = []
    monkeypatch.setattr(timing, "_cuda_in_use", lambda: True)
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *args: calls.append("sync"))
    return calls


def test_on_the_cpu_a_stage_is_its_wall_time_summed_over_calls(monkeypatch):
    monkeypatch.setattr(timing, "_cuda_in_use", lambda: False)
    times = iter([10.0, 10.5, 20.0, 20.25])
    monkeypatch.setattr(timing.time, "perf_counter", lambda: next(times))
    timer = StageTimer()
    for _ in range(2):
        with timer.stage("model"):
            pass
    assert timer.seconds == {"model": 0.75}


def test_on_cuda_stages_record_events_and_never_synchronise(fake_cuda):
    timer = StageTimer()
    with timer.stage("encode"):
        FakeEvent.clock[0] = 0.25
    with timer.stage("unet"):
        FakeEvent.clock[0] = 1.25
    with timer.stage("unet"):
        FakeEvent.clock[0] = 2.0
    assert fake_cuda == []  # no stage boundary waited for the device
    assert FakeEvent.synchronized == []  # nor did recording: only reading waits
    assert timer.seconds == pytest.approx({"encode": 0.25, "unet": 1.75})
    assert len(FakeEvent.synchronized) == 3  # each pending end event, once
    assert timer.seconds == pytest.approx({"encode": 0.25, "unet": 1.75})
    assert len(FakeEvent.synchronized) == 3


def test_profiling_synchronises_at_every_boundary(fake_cuda):
    timer = StageTimer(synchronize=True)
    with timer.stage("unet"):
        pass
    assert fake_cuda == ["sync", "sync"]
    assert set(timer.seconds) == {"unet"} and FakeEvent.synchronized == []


def test_stages_from_several_threads_and_merged_figures_add_up(monkeypatch):
    monkeypatch.setattr(timing, "_cuda_in_use", lambda: False)
    timer = StageTimer()

    def work() -> None:
        for _ in range(200):
            with timer.stage("finish"):
                pass

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    timer.merge({"finish": 1.0, "read": 2.0})
    seconds = timer.seconds
    assert seconds["read"] == 2.0 and seconds["finish"] >= 1.0
