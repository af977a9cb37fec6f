"""The driver loop when a node is lost and its replacement worker cannot start (no resources yet).

A deterministic, Ray-free replay of what ``tests/test_submit_cluster.py`` does on a real
two-node cluster: a fake ``ray`` module runs each worker's calls in order, a worker can die
(its calls fail with a system error, as Ray reports a lost node), and a replacement worker can
stay pending forever (as an actor waiting for resources that only an autoscaler could add).
"""

from __future__ import annotations

import itertools

import pytest

from labeler.runtime.executor import Driver, ShardEvents
from labeler.runtime.ray_executor import RayWorkers


class FakeRayError(Exception):
    pass


class FakeRayTaskError(FakeRayError):
    pass


class FakeActorDiedError(FakeRayError):
    pass


class FakeExceptions:
    RayError = FakeRayError
    RayTaskError = FakeRayTaskError


class FakeRef:
    counter = itertools.count()

    def __init__(self, worker: FakeWorker, method: str, args: tuple) -> None:
        self.order = next(self.counter)
        self.worker, self.method, self.args = worker, method, args


class FakeMethod:
    def __init__(self, worker: FakeWorker, name: str) -> None:
        self.worker, self.name = worker, name

    def remote(self, *args) -> FakeRef:
        ref = FakeRef(self.worker, self.name, args)
        self.worker.calls.append(ref)
        return ref


class FakeWorker:
    """An actor: answers its calls in order while alive; never answers while pending."""

    def __init__(self, name: str, pending: bool = False) -> None:
        self.name, self.pending, self.dead = name, pending, False
        self.calls: list[FakeRef] = []
        self.processed: list[str] = []
        self.ready = FakeMethod(self, "ready")
        self.process = FakeMethod(self, "process")


class FakeRay:
    """Just enough of ``ray`` for :class:`RayWorkers`; a dead worker's calls fail first."""

    exceptions = FakeExceptions

    def __init__(self, max_idle_waits: int = 50) -> None:
        self.max_idle_waits = max_idle_waits
        self.idle_waits = 0
        self.on_shard_done = lambda shard_id: None

    def wait(self, refs, num_returns=1, timeout=None):
        dead = [ref for ref in refs if ref.worker.dead]
        if dead:
            return [min(dead, key=lambda ref: ref.order)], []
        heads = [ref.worker.calls[0] for ref in refs
                 if not ref.worker.pending and ref.worker.calls and ref.worker.calls[0] is ref]
        if not heads:
            self.idle_waits += 1
            if self.idle_waits > self.max_idle_waits:
                raise AssertionError("the driver waits for calls that can never finish")
            return [], refs
        return [min(heads, key=lambda ref: ref.order)], []

    def get(self, ref):
        worker = ref.worker
        if worker.dead:
            worker.calls = [call for call in worker.calls if call is not ref]
            raise FakeActorDiedError(f"the actor {worker.name} died (its node was lost)")
        worker.calls.remove(ref)
        if ref.method == "ready":
            return {"host": "node", "pid": 1, "device": "cpu", "categories": [{"id": 1}]}
        shard_id = ref.args[1]
        worker.processed.append(shard_id)
        self.on_shard_done(shard_id)
        return {"shard_id": shard_id}

    def kill(self, handle, no_restart=True):
        handle.dead = True


class FakeRunFolder:
    class output:
        uri = "memory://out"

    def __init__(self) -> None:
        self.done: list[str] = []
        self.failed: dict[str, str] = {}

    def mark_done(self, shard_id: str) -> None:
        self.done.append(shard_id)

    def write_categories(self, categories) -> None:
        """The categories of a merge; these tests never merge."""

    def record_failure(self, shard_id: str, error: str, attempts: int) -> None:
        self.failed[shard_id] = error


@pytest.fixture(autouse=True)
def fast_heartbeat(monkeypatch):
    monkeypatch.setattr("labeler.runtime.executor.HEARTBEAT_SECONDS", 0.0)


def test_shards_of_a_lost_node_go_to_live_workers_not_to_a_pending_replacement():
    ray = FakeRay()
    head_worker, node2_worker = FakeWorker("head"), FakeWorker("node2")
    replacements: list[FakeWorker] = []
    queue = [head_worker, node2_worker]

    def make_worker() -> FakeWorker:
        if queue:
            return queue.pop(0)
        replacement = FakeWorker(f"replacement-{len(replacements)}", pending=True)
        replacements.append(replacement)
        return replacement

    def lose_node2_after_the_first_shard(shard_id: str) -> None:
        node2_worker.dead = True

    ray.on_shard_done = lose_node2_after_the_first_shard
    shards = [f"s{index}" for index in range(1, 7)]
    run = FakeRunFolder()
    driver = Driver(RayWorkers(ray, make_worker), 2, run, shards, ShardEvents())
    report = driver.run()

    assert sorted(report.done) == shards and not report.failed
    assert sorted(run.done) == shards
    assert report.worker_deaths == 1 and report.retries >= 1
    assert replacements and all(not worker.processed for worker in replacements)
    assert not any(ref.method == "process" for worker in replacements for ref in worker.calls), \
        "shards were queued on a replacement worker that never started"
    assert sorted(head_worker.processed + node2_worker.processed) == shards
