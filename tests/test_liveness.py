"""Liveness: the driver's verdict on workers from their published signs of life.

The clock is injected and advanced by the test; the signs of life are written by the test, so
every verdict follows an event, never a timer.
"""

from __future__ import annotations

import json
import time

import pytest

from labeler.io.folders import Folder
from labeler.runtime.liveness import LifeSigns, StallWatch, alive_path, worker_key


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def output():
    uri = f"memory://liveness-{time.monotonic_ns()}/out"
    yield Folder(uri)
    Folder(uri).remove("", recursive=True)


def _publish(output: Folder, key: str, beat: int) -> None:
    output.write_bytes(alive_path(key), json.dumps({"beat": beat, "progress": 0}).encode())


def test_a_silent_worker_is_stalled_after_the_timeout_and_not_before(output):
    clock = Clock()
    watch = StallWatch(output, stall_timeout=100, clock=clock)
    watch.alive(0, "host-1")
    _publish(output, "host-1", 1)
    clock.now = 50
    assert watch.stalled([0]) == []  # first look: the beat is new
    clock.now = 140
    assert watch.stalled([0]) == []  # 90 s since its last new beat
    clock.now = 170
    assert watch.stalled([0]) == [(0, 120)]


def test_a_worker_whose_beats_go_on_is_never_stalled(output):
    clock = Clock()
    watch = StallWatch(output, stall_timeout=100, clock=clock)
    watch.alive(0, "host-1")
    for beat in range(1, 20):
        _publish(output, "host-1", beat)
        clock.now += 60
        assert watch.stalled([0]) == []


def test_the_driver_own_signs_count_and_idle_or_unready_workers_are_not_judged(output):
    clock = Clock()
    watch = StallWatch(output, stall_timeout=100, clock=clock)
    watch.alive(0)  # not ready yet: no key, no verdict
    watch.alive(1, "host-2")
    clock.now = 500
    assert watch.stalled([0]) == []  # only busy slots are asked about, and 0 has no key
    watch.alive(1)  # a call of worker 1 just finished
    clock.now = 550
    assert watch.stalled([1]) == []
    clock.now = 601
    assert watch.stalled([1]) == [(1, 51 + 50)]
    watch.forget(1)
    assert watch.stalled([1]) == []


def test_storage_trouble_is_not_a_stall(output, monkeypatch):
    clock = Clock()
    watch = StallWatch(output, stall_timeout=100, clock=clock)
    watch.alive(0, "host-1")

    def unreachable(relative):
        raise OSError("the store is down")

    monkeypatch.setattr(output, "read_bytes", unreachable)
    clock.now = 1000
    assert watch.stalled([0]) == []


def test_the_driver_looks_at_most_every_quarter_timeout(output, monkeypatch):
    clock = Clock()
    watch = StallWatch(output, stall_timeout=100, clock=clock)
    watch.alive(0, "host-1")
    reads = []
    real = output.read_bytes
    monkeypatch.setattr(output, "read_bytes", lambda relative: reads.append(1) or real(relative))
    for step in range(100):
        clock.now = step
        watch.stalled([0])
    assert len(reads) == 3  # at 25, 50, 75


def test_a_worker_publishes_its_beat_and_progress(output):
    key = worker_key({"host": "node/1", "pid": 7})
    assert key == "node_1-7"
    life = LifeSigns(key, interval=3600)
    life.beat(output)  # the first sign starts the heartbeat, which publishes at once
    deadline = time.monotonic() + 60
    while not output.exists(alive_path(key)) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert json.loads(output.read_bytes(alive_path(key))) == {"beat": 1, "progress": 1}
