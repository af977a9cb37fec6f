"""The output lease: one driver per output, takeover of dead holders, loss detection."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

import labeler.runtime.lease as lease_module
from labeler.io.storage import Folder
from labeler.runtime.lease import (
    LEASE_PATH,
    LeaseHeldError,
    LeaseLostError,
    LeaseRecord,
    OutputLease,
    lease_is_live,
    read_lease,
)


def _write_foreign_lease(folder: Folder, **changes) -> dict:
    record = {"owner": "someone-else", "host": socket.gethostname(), "pid": 1,
              "command": "labeler run", "started": time.time(), "heartbeat": time.time()}
    record.update(changes)
    folder.write_bytes(LEASE_PATH, json.dumps(record).encode())
    return record


@pytest.fixture(params=["local", "memory"])
def folder(request, tmp_path):
    if request.param == "local":
        yield Folder(str(tmp_path / "out"))
        return
    uri = f"memory://lease-{time.monotonic_ns()}/out"
    yield Folder(uri)
    Folder(uri).remove("", recursive=True)


def test_second_driver_is_refused_naming_the_holder(folder):
    first = OutputLease(folder)
    first.acquire()
    try:
        with pytest.raises(LeaseHeldError, match=rf"pid \d+ on {socket.gethostname()}"):
            OutputLease(folder).acquire()
        first.check()  # the refused attempt did not disturb the holder
    finally:
        first.release()
    assert read_lease(folder) is None


def test_release_lets_the_next_driver_in(folder):
    with_lease = OutputLease(folder)
    with_lease.acquire()
    with_lease.release()
    second = OutputLease(folder)
    second.acquire()
    assert read_lease(folder).owner == second.owner
    second.release()


def test_dead_local_holder_is_taken_over_at_once(folder):
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    _write_foreign_lease(folder, pid=process.pid)  # fresh heartbeat, but the process is gone
    lease = OutputLease(folder)
    lease.acquire()
    assert read_lease(folder).owner == lease.owner
    lease.release()


def test_stale_heartbeat_of_another_host_is_taken_over(folder):
    _write_foreign_lease(folder, host="elsewhere", heartbeat=time.time() - 600)
    lease = OutputLease(folder, stale_seconds=60)
    lease.acquire()
    assert read_lease(folder).owner == lease.owner
    lease.release()


def test_fresh_lease_of_another_host_is_respected(folder):
    _write_foreign_lease(folder, host="elsewhere", pid=123)
    with pytest.raises(LeaseHeldError, match="pid 123 on elsewhere"):
        OutputLease(folder).acquire()
    assert read_lease(folder).owner == "someone-else"


def test_waiting_driver_gets_the_lease_once_released(folder, monkeypatch):
    first = OutputLease(folder)
    first.acquire()
    seen_held = threading.Semaphore(0)

    def counting_read(output):
        record = read_lease(output)
        if record is not None and record.owner == first.owner:
            seen_held.release()
        return record

    monkeypatch.setattr(lease_module, "read_lease", counting_read)
    second = OutputLease(folder)
    waiter = threading.Thread(target=second.acquire, kwargs={"wait": True, "poll_seconds": 0.01})
    waiter.start()
    for _ in range(3):  # the waiter has found the lease held three times: it is waiting
        assert seen_held.acquire(timeout=60)
    assert waiter.is_alive()
    first.release()
    waiter.join(timeout=60)
    assert not waiter.is_alive()
    assert read_lease(folder).owner == second.owner
    second.release()


def test_holder_notices_a_takeover(folder):
    lease = OutputLease(folder)
    lease.acquire()
    try:
        _write_foreign_lease(folder, host="elsewhere")
        with pytest.raises(LeaseLostError, match="taken over by pid 1 on elsewhere"):
            lease.check()
    finally:
        lease.release()
    assert read_lease(folder).owner == "someone-else"  # release never removes a foreign lease


def test_heartbeat_renews_the_lease(folder):
    lease = OutputLease(folder, heartbeat_seconds=0.01)
    lease.acquire()
    try:
        first = read_lease(folder).heartbeat
        deadline = time.monotonic() + 60
        while read_lease(folder).heartbeat == first and time.monotonic() < deadline:
            time.sleep(0.01)
        assert read_lease(folder).heartbeat > first
    finally:
        lease.release()


def test_liveness_rules():
    now = time.time()
    live = LeaseRecord("o", socket.gethostname(), os.getpid(), "c", now, now)
    assert lease_is_live(live, now=now)
    assert not lease_is_live(live, stale_seconds=60, now=now + 61)
    remote = LeaseRecord("o", "elsewhere", 999999, "c", now, now)
    assert lease_is_live(remote, now=now)  # a remote pid cannot be checked: heartbeat only
