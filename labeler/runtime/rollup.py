"""Rolled-up shard stats: one summary file per :data:`GROUP_SHARDS` done shards, so
``labeler status`` on 400k shards reads a few hundred files, not 400k stats files.

Layout: ``run/rollup/group-NNNNNN.json`` covers the plan's shards at positions
``NNNNNN * GROUP_SHARDS`` to the next group's first (positions are stable: a resume appends
shards). The driver writes a group's roll-up (:class:`RollUpWriter`) when every shard of the
group is done, and again whenever one of its shards is done again (a redo); before merging it
writes those still missing (a driver killed between a shard's done marker and the roll-up).
Each entry holds the fields of one shard's stats that ``status`` and the run summary use
(:data:`ROLLED_UP_KEYS`), and the size and storage stamp its stats file had when it was read
(stamp taken first: a rewrite after the read changes it). The file's first line holds the
sha256 of the rest (the entries, JSON); it is written atomically through
:class:`~labeler.io.folders.Folder`.

A roll-up is a cache, never the truth. :class:`CommittedStats` takes a shard's stats from it
only when the roll-up is whole (its digest matches) and the shard's stats file still has the
recorded size and stamp (one metadata request); anything else (a shard redone since, a stats
file removed or rewritten, a group never rolled up, a damaged roll-up) is read from the
shard's own stats file, as without roll-ups. A reader holds one group's roll-up at a time. Callers re-read the stats file before reporting a shard as
damaged (:func:`labeler.runtime.status.run_progress`), so a roll-up can never be the evidence of
damage.
"""

from __future__ import annotations

import hashlib
import json
import logging

from labeler.runtime.merge_record import file_stamp
from labeler.runtime.run_folder import RunFolder

logger = logging.getLogger(__name__)

ROLLUP_DIR = "run/rollup"
#: Shards per roll-up (10k shards: 10 files; 390k shards, 100M images: 390 files of ~0.6 MB).
GROUP_SHARDS = 1000
#: The stats fields a roll-up keeps (what status, the run summary and the integrity check read).
ROLLED_UP_KEYS = ("images", "labeled", "failed", "annotations", "seconds", "failure_reasons",
                  "retryable_failures", "parts")


def rollup_file(group: int) -> str:
    """The roll-up of the plan's ``group``-th group of :data:`GROUP_SHARDS` shards."""
    return f"{ROLLUP_DIR}/group-{group:06d}.json"


def _encode(entries: dict) -> bytes:
    """A roll-up file: a first line ``{"sha256": <of the rest>}``, then the entries as JSON."""
    body = json.dumps(entries, sort_keys=True).encode()
    return json.dumps({"sha256": hashlib.sha256(body).hexdigest()}).encode() + b"\n" + body


def _decode(data: bytes) -> dict | None:
    """The entries of a roll-up file, or None when it is not whole."""
    header, _, body = data.partition(b"\n")
    try:
        whole = json.loads(header)["sha256"] == hashlib.sha256(body).hexdigest()
        return json.loads(body) if whole else None
    except (ValueError, UnicodeDecodeError, KeyError, TypeError):
        return None


class RollUpWriter:
    """Writes the roll-ups of a run's groups as their shards are done (the driver's side).

    Each shard's entry is read when its done marker is written (one metadata request and its
    stats file: the driver's storage work stays spread over the run, no burst of 1000 reads
    when a group completes) and held until its group is complete; entries of shards done by an
    earlier run are read when their group is rolled up. Memory: the incomplete groups' entries.

    Args:
        run: the run folder.
        shards: the plan's shards (``shard_id``), in plan order.
        done: the shards done when this run starts.
    """

    def __init__(self, run: RunFolder, shards: list[dict], done: set[str]) -> None:
        self.run = run
        ids = [shard["shard_id"] for shard in shards]
        self.groups = [ids[start:start + GROUP_SHARDS] for start in range(0, len(ids), GROUP_SHARDS)]
        self.group_of = {shard_id: index // GROUP_SHARDS for index, shard_id in enumerate(ids)}
        self.done = set(done)
        self.held: dict[int, dict[str, dict | None]] = {}

    def shard_done(self, shard_id: str) -> None:
        """A shard's done marker was written: read its entry, and roll its group up when the
        group is complete. A storage error costs only the roll-up (status reads the stats
        files instead), never the run."""
        self.done.add(shard_id)
        group = self.group_of.get(shard_id)
        if group is None:
            return
        try:
            self.held.setdefault(group, {})[shard_id] = self._entry(shard_id)
        except (OSError, ValueError) as error:
            self.held.get(group, {}).pop(shard_id, None)  # read again with the group
            logger.warning("could not read the stats of shard %s for its roll-up: %s",
                           shard_id, error)
        if self.done.issuperset(self.groups[group]):
            self._write(group)

    def fill(self) -> int:
        """Write the roll-ups of complete groups that have none; returns how many."""
        present = set(self.run.output.list(ROLLUP_DIR))
        written = 0
        for group, members in enumerate(self.groups):
            if rollup_file(group).rsplit("/", 1)[1] not in present \
                    and self.done.issuperset(members):
                written += self._write(group)
        return written

    def _entry(self, shard_id: str) -> dict | None:
        """The shard's entry (None: no stats file, or a store without stamps: nothing to
        vouch for, readers fall back to the stats file)."""
        recorded = file_stamp(self.run.output, self.run.stats_file(shard_id))  # before the read
        stats = self.run.read_stats(shard_id)
        if recorded is None or recorded["stamp"] is None or stats is None:
            return None
        return {**recorded, "stats": {key: stats[key] for key in ROLLED_UP_KEYS if key in stats}}

    def _write(self, group: int) -> bool:
        """Roll one group up (see :meth:`shard_done` for errors)."""
        held = self.held.pop(group, {})
        try:
            entries = {shard_id: held[shard_id] if shard_id in held else self._entry(shard_id)
                       for shard_id in self.groups[group]}
            self.run.output.write_bytes(rollup_file(group), _encode(
                {shard_id: entry for shard_id, entry in entries.items() if entry is not None}))
        except (OSError, ValueError) as error:
            logger.warning("could not roll up the stats of group %d in %s: %s (status reads the "
                           "shards' stats files instead)", group, self.run.output.uri, error)
            return False
        return True


class CommittedStats:
    """Each done shard's stats: from its group's roll-up where it still vouches for the shard,
    else from the shard's own stats file (the reader's side; see the module docstring). One
    group's roll-up is held at a time: ask for shards in plan order.

    Args:
        run: the run folder.
        use_rollups: False reads every stats file (``labeler status --deep``).
    """

    def __init__(self, run: RunFolder, use_rollups: bool = True) -> None:
        self.run = run
        self.use_rollups = use_rollups
        self.group: int | None = None
        self.entries: dict[str, dict] = {}

    def stats(self, shard_id: str, position: int) -> tuple[dict | None, bool]:
        """(stats, from_rollup) of the plan's ``position``-th shard: its stats (None: no stats
        file), and whether they came from a roll-up (its stats file has the size and stamp
        the roll-up recorded: one metadata request, nothing read).

        Raises:
            ValueError, UnicodeDecodeError: the shard's stats file is unreadable.
        """
        if self.use_rollups:
            group = position // GROUP_SHARDS
            if group != self.group:
                self.group, self.entries = group, _read_rollup(self.run, group)
            entry = self.entries.get(shard_id)
            if entry is not None and file_stamp(self.run.output, self.run.stats_file(shard_id)) \
                    == {"bytes": entry["bytes"], "stamp": entry["stamp"]}:
                return entry["stats"], True
        return self.run.read_stats(shard_id), False


def _read_rollup(run: RunFolder, group: int) -> dict[str, dict]:
    """Shard id -> its entry in the group's roll-up; empty when there is none or it is not
    whole (damaged: logged)."""
    relative = rollup_file(group)
    try:
        rolled = _decode(run.output.read_bytes(relative))
    except FileNotFoundError:
        return {}
    if not isinstance(rolled, dict):
        logger.warning("%s is damaged: ignored (the shards' stats files are read instead)",
                       run.output.uri_of(relative))
        return {}
    return rolled
