"""A shard's log capture (`runtime.shard.capture_log`) when shards overlap in threads of one
process (the in-process executor, a Ray actor running two shards): the `labeler` logger's level
is restored whatever the order the captures end in, and a capture still open keeps its records.
Threads are ordered by events, never by sleeps."""

from __future__ import annotations

import logging
import threading

import pytest

from labeler.runtime.shard import capture_log, working_for

OWN = logging.getLogger("labeler")
WAIT = 60  # seconds an event may take before the test gives up (never reached when it passes)


@pytest.fixture
def own_level_warning():
    before = OWN.level
    OWN.setLevel(logging.WARNING)
    yield
    OWN.setLevel(before)


def run_two_shards(first_leaves_first: bool) -> dict[str, str]:
    """Shard a enters, then b; one leaves while the other logs an INFO record and leaves."""
    entered = {name: threading.Event() for name in "ab"}
    left = {name: threading.Event() for name in "ab"}
    logs: dict[str, str] = {}
    errors: list[BaseException] = []
    order = ("a", "b") if first_leaves_first else ("b", "a")

    def shard(name: str, other: str) -> None:
        try:
            if name == "b":
                assert entered["a"].wait(WAIT)
            with working_for(name), capture_log(shard_id=name) as log:
                entered[name].set()
                assert entered[other].wait(WAIT)
                if name == order[1]:  # the one that leaves last logs after the other left
                    assert left[order[0]].wait(WAIT)
                logging.getLogger("labeler.runtime.test").info("record of shard %s", name)
            logs[name] = log.getvalue()
        except BaseException as error:  # noqa: BLE001 - re-raised by the test thread
            errors.append(error)
        finally:
            left[name].set()

    threads = [threading.Thread(target=shard, args=pair) for pair in (("a", "b"), ("b", "a"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    if errors:
        raise errors[0]
    return logs


@pytest.mark.parametrize("first_leaves_first", [True, False], ids=["first-in-first-out", "last-in-first-out"])
def test_overlapping_captures_restore_the_level_and_keep_their_records(own_level_warning,
                                                                       first_leaves_first):
    logs = run_two_shards(first_leaves_first)
    assert OWN.level == logging.WARNING
    for name, other in (("a", "b"), ("b", "a")):
        assert f"record of shard {name}" in logs[name]
        assert f"record of shard {other}" not in logs[name]


def test_a_lower_level_already_set_is_kept(own_level_warning):
    OWN.setLevel(logging.DEBUG)
    with capture_log(level=logging.INFO):
        assert OWN.level == logging.DEBUG
    assert OWN.level == logging.DEBUG


def test_captures_at_different_levels_run_at_the_lowest_until_it_ends(own_level_warning):
    with capture_log(level=logging.INFO):
        with capture_log(level=logging.DEBUG):
            assert OWN.level == logging.DEBUG
        assert OWN.level == logging.INFO
    assert OWN.level == logging.WARNING
