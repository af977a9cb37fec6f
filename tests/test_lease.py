"""The output lease: one driver per output, takeover of dead holders, loss detection."""

from __future__ import annotations

import datetime
import errno
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

import labeler.runtime.lease as lease_module
from labeler.io.folders import Folder
from labeler.runtime.lease import (
    LEASE_PATH,
    LeaseHeldError,
    LeaseLostError,
    LeaseRecord,
    OutputLease,
    inspect_lease,
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


def _date_lease(folder: Folder, epoch: float) -> None:
    """Set the lease's modification time, as the store's clock would have stamped it."""
    if folder.is_local:
        os.utime(folder.path(LEASE_PATH), (epoch, epoch))
    else:
        folder.fs.store[folder.path(LEASE_PATH)].modified = datetime.datetime.fromtimestamp(
            epoch, tz=datetime.timezone.utc)
    assert abs(folder.modified(LEASE_PATH) - epoch) < 1


def test_stale_heartbeat_of_another_host_is_taken_over(folder):
    _write_foreign_lease(folder, host="elsewhere")
    _date_lease(folder, time.time() - 600)
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

    def counting_inspect(output):
        state = inspect_lease(output)
        if state.record is not None and state.record.owner == first.owner:
            seen_held.release()
        return state

    monkeypatch.setattr(lease_module, "inspect_lease", counting_inspect)
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


def test_store_clock_decides_the_age():
    now = time.time()
    record = LeaseRecord("o", "elsewhere", 1, "c", now, heartbeat=now + 3600)
    assert not lease_is_live(record, stale_seconds=60, now=now, written=now - 600)
    record = LeaseRecord("o", "elsewhere", 1, "c", now, heartbeat=now - 3600)
    assert lease_is_live(record, stale_seconds=60, now=now, written=now - 5)


# -- fault: an unreadable lease must not lock the output -----------------------------------------


@pytest.mark.parametrize("content", [b"", b"\0\0\0", b"{not json", b'{"owner": "x"}', b"[1, 2]"])
def test_an_unreadable_lease_is_taken_over_naming_the_file(folder, content, caplog):
    folder.write_bytes(LEASE_PATH, content)
    assert inspect_lease(folder).problem
    lease = OutputLease(folder)
    with caplog.at_level(logging.WARNING, logger="labeler.runtime.lease"):
        lease.acquire()
    try:
        assert read_lease(folder).owner == lease.owner
        assert folder.uri_of(LEASE_PATH) in caplog.text and "taking over" in caplog.text
    finally:
        lease.release()
    assert not folder.exists(LEASE_PATH)


def test_a_lease_that_cannot_be_written_leaves_nothing(tmp_path, monkeypatch):
    folder = Folder(str(tmp_path / "out"))

    def full_disk(descriptor):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        OutputLease(folder).acquire()
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    monkeypatch.undo()  # the disk has room again: the next driver is not locked out
    lease = OutputLease(folder)
    lease.acquire()
    assert read_lease(folder).owner == lease.owner
    lease.release()


def test_without_hard_links_the_lease_is_created_exclusively(tmp_path, monkeypatch):
    folder = Folder(str(tmp_path / "out"))

    def no_links(source, target):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    first = OutputLease(folder)
    first.acquire()
    try:
        with pytest.raises(LeaseHeldError):
            OutputLease(folder).acquire()
    finally:
        first.release()
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


# -- fault: clock skew between hosts neither locks nor steals ------------------------------------


def test_a_holder_clock_ahead_does_not_lock_the_output(folder):
    """A dead holder whose clock ran an hour ahead: its heartbeat looks fresh for an hour."""
    _write_foreign_lease(folder, host="elsewhere", heartbeat=time.time() + 3600)
    _date_lease(folder, time.time() - 600)  # the store wrote it 10 minutes ago
    lease = OutputLease(folder, stale_seconds=60)
    lease.acquire()
    assert read_lease(folder).owner == lease.owner
    lease.release()


def test_a_holder_clock_behind_is_not_robbed(folder):
    """A live holder whose clock runs an hour behind: its heartbeat looks an hour old."""
    _write_foreign_lease(folder, host="elsewhere", pid=123, heartbeat=time.time() - 3600)
    with pytest.raises(LeaseHeldError, match="pid 123 on elsewhere"):
        OutputLease(folder, stale_seconds=60).acquire()
    assert read_lease(folder).owner == "someone-else"


class _Ticks:
    """A monotonic clock that advances one second per reading."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def test_a_waiter_takes_over_when_the_beats_stop_whatever_the_clocks(folder, caplog):
    """The lease looks fresh by every clock (the store's is ahead of ours), but its beat
    sequence never moves: the waiter reports its wait, then takes over."""
    _write_foreign_lease(folder, host="elsewhere", pid=77, heartbeat=time.time() + 3600)
    _date_lease(folder, time.time() + 3600)
    clock = _Ticks()
    lease = OutputLease(folder, stale_seconds=5, clock=clock)
    with caplog.at_level(logging.INFO, logger="labeler.runtime.lease"):
        lease.acquire(wait=True, poll_seconds=0)
    try:
        assert read_lease(folder).owner == lease.owner
        assert "waiting 0 s so far for the lease" in caplog.text and "pid 77" in caplog.text
        assert "beats stopped" in caplog.text
        assert clock.now < 20  # decided by the sequence standing still, not by a timestamp
    finally:
        lease.release()


def test_a_waiter_keeps_waiting_while_the_beats_go_on(folder, monkeypatch):
    _write_foreign_lease(folder, host="elsewhere", pid=77)
    beats = iter(range(1, 40))
    real_inspect = lease_module.inspect_lease

    released = []

    def beating_holder(output):  # the holder renews between every two looks of the waiter
        sequence = next(beats, None)
        if sequence is not None:
            _write_foreign_lease(output, host="elsewhere", pid=77, sequence=sequence)
        elif not released:  # then releases it
            released.append(output.remove(LEASE_PATH))
        return real_inspect(output)

    monkeypatch.setattr(lease_module, "inspect_lease", beating_holder)
    clock = _Ticks()
    lease = OutputLease(folder, stale_seconds=5, clock=clock)
    lease.acquire(wait=True, poll_seconds=0)
    try:
        assert released  # it waited through every beat, then took the released lease
        assert read_lease(folder).owner == lease.owner
    finally:
        lease.release()
