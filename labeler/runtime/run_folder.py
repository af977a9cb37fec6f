"""The run folder contract (``OUTPUT/run/``): configuration, plan, per-shard parts, markers.

Layout::

    run/config.json                 settings + fingerprint; checked on every resume
    run/plan.json                   shard ids in order and image counts (written after planning)
    run/manifest/<shard>.jsonl      the shard's images: {"uri", "image_id"} per line
    run/shards/<shard>/images.parquet, annotations.parquet   committed atomically (labeler.output.parts)
    run/output.json                 categories and COCO info of the merged output (the merge)
    run/stats/<shard>.json          counts, stage timings and each part's sha256 and row count,
                                    written after the parts (labeler.runtime.integrity)
    run/rollup/group-<n>.json       the stats of 1000 done shards in one file, for status
                                    (labeler.runtime.rollup: a cache, checked before use)
    run/done/<shard>                completion marker, written last (by the driver)
    run/logs/<shard>.log            the shard's log (its latest attempt)
    run/failed/<shard>.json         a shard that failed after its retries: error, attempts
    run/categories.json             the method's COCO categories (reported by the first worker)
    run/progress.json               the driver's heartbeat: rate, workers, updated
    run/lease.json                  the driver holding the output (labeler.runtime.lease)
    run/alive/<worker>.json         a worker's signs of life (labeler.runtime.liveness)
    run/stalled/<shard>.json        a shard whose worker stalled and was replaced
    run/listing.json                what the last listing of the input skipped (hidden entries)

A crash at any point leaves no marker, so the shard is redone, and its parts are keyed by the
shard id, so the redo overwrites them. A done shard whose parts no longer match their recorded
digests is redone too (its marker is removed first).
"""

from __future__ import annotations

import json
import logging
import time

from labeler import __version__
from labeler.config import JobConfig, recorded_changes, settings_fingerprint
from labeler.errors import UserError
from labeler.io.folders import Folder
from labeler.io.retry import RetryPolicy
from labeler.output import parts

logger = logging.getLogger(__name__)


class ConfigMismatchError(UserError):
    """The output folder belongs to a run with other settings."""


STATS_DIR = "run/stats"
#: Backoff for the run folder's own reads and writes (a storage restart must not fail a shard).
STORAGE_RETRY = RetryPolicy(attempts=8, base_delay=0.25, max_delay=8.0)


class RunFolder:
    """The ``run/`` folder under a job's output, and the final outputs beside it.

    Reads and writes made while shards run retry transient storage errors with backoff.
    """

    def __init__(self, output: Folder, retry: RetryPolicy = STORAGE_RETRY) -> None:
        self.output = output
        self.retry = retry

    def _write(self, relative: str, data: bytes) -> None:
        self.retry.call(lambda: self.output.write_bytes(relative, data),
                        what=self.output.uri_of(relative))

    def _write_json(self, relative: str, value) -> None:
        self._write(relative, json.dumps(value, indent=1, sort_keys=True).encode())

    def _read(self, relative: str) -> bytes:
        return self.retry.call(lambda: self.output.read_bytes(relative),
                               what=self.output.uri_of(relative))

    # -- configuration -------------------------------------------------------------------
    def claim(self, config: JobConfig, image_root: str | None = None) -> bool:
        """Record ``config`` for a new run, or check it against the recorded one.

        ``image_root`` (the folder input's URI, recorded beside the settings, not fingerprinted)
        is where the images named by the outputs' ``file_name`` live.

        Returns:
            True when resuming an existing run.

        Raises:
            ConfigMismatchError: the recorded settings differ and ``config.overwrite`` is false.
        """
        settings = config.output_settings()
        if self.output.exists("run/config.json"):
            recorded = self.output.read_json("run/config.json")
            changes, unrecorded = recorded_changes(recorded["settings"], settings)
            if not changes:
                if unrecorded:
                    self._record_digests(recorded, settings, unrecorded)
                return True
            if not config.overwrite:
                raise ConfigMismatchError(
                    f"{self.output.uri} holds a run with other settings:\n  "
                    + "\n  ".join(changes)
                    + "\nUse the same settings to resume, another --output, or --overwrite."
                )
            logger.warning("--overwrite: removing the previous run in %s", self.output.uri)
            self.clear()
        self.output.write_json(
            "run/config.json",
            {
                "fingerprint": settings_fingerprint(settings),
                "settings": settings,
                "labeler_version": __version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "image_root": image_root,
            },
        )
        return False

    def _record_digests(self, recorded: dict, settings: dict, unrecorded: list[str]) -> None:
        """A run recorded before ``unrecorded`` (content digests: the model's weights, a
        method's resource) entered the fingerprint resumes: say so, and record them, so a
        later change is refused. Its fingerprint stays: it is the run's id, in every
        annotation already written."""
        logger.warning("%s: the run was recorded without %s (the weights were not recorded "
                       "then): recording it now and resuming", self.output.uri,
                       ", ".join(unrecorded))
        self.output.write_json("run/config.json", {**recorded, "settings": settings})

    def clear(self) -> None:
        """Remove the run and its outputs, all but the lease of the driver doing it."""
        for name in self.output.list("run"):
            if name != "lease.json":
                self.output.remove(f"run/{name}", recursive=True)
        for name in parts.FINAL_OUTPUTS:
            self.output.remove(name, recursive=True)

    # -- plan ----------------------------------------------------------------------------
    def has_plan(self) -> bool:
        return self.output.exists("run/plan.json")

    def write_manifest(self, shard_id: str, entries: list[dict]) -> None:
        lines = "".join(json.dumps(entry, ensure_ascii=False) + "\n" for entry in entries)
        self._write(f"run/manifest/{shard_id}.jsonl", lines.encode())

    def read_manifest(self, shard_id: str) -> list[dict]:
        text = self._read(f"run/manifest/{shard_id}.jsonl").decode()
        return [json.loads(line) for line in text.splitlines() if line]

    def write_plan(self, shards: list[dict]) -> None:
        """``shards``: ``{"shard_id", "n_images", "first_image_id"}`` in collection order."""
        self.output.write_json(
            "run/plan.json", {"shards": shards, "n_images": sum(s["n_images"] for s in shards)}
        )

    def read_plan(self) -> dict:
        return self.output.read_json("run/plan.json")

    # -- shards --------------------------------------------------------------------------
    def shard_part(self, shard_id: str, name: str) -> str:
        """Where the shard's part file ``name`` lives (see :mod:`labeler.output.parts`)."""
        return parts.shard_file(shard_id, name)

    def write_shard_file(self, shard_id: str, name: str, data: bytes) -> None:
        """Commit one file of the shard's part folder (a part or a COCO fragment), atomically."""
        self._write(parts.shard_file(shard_id, name), data)

    def is_done(self, shard_id: str) -> bool:
        return self.output.exists(f"run/done/{shard_id}")

    def done_shards(self) -> set[str]:
        return {name for name in self.output.list("run/done") if ".tmp-" not in name}

    def mark_done(self, shard_id: str) -> None:
        """Write the completion marker (the driver does, after the worker committed)."""
        self._write(f"run/done/{shard_id}", b"")
        self.clear_failure(shard_id)

    def unmark_done(self, shard_id: str) -> None:
        """Remove a shard's completion marker, so the shard is redone (its parts are damaged,
        or it holds failures that may heal)."""
        self.retry.call(lambda: self.output.remove(f"run/done/{shard_id}"),
                        what=self.output.uri_of(f"run/done/{shard_id}"))

    def stats_file(self, shard_id: str) -> str:
        return f"{STATS_DIR}/{shard_id}.json"

    def write_stats(self, shard_id: str, stats: dict) -> None:
        self._write_json(self.stats_file(shard_id), stats)

    def read_stats(self, shard_id: str) -> dict | None:
        path = self.stats_file(shard_id)
        return self.output.read_json(path) if self.output.exists(path) else None

    def write_log(self, shard_id: str, text: str) -> None:
        self._write(f"run/logs/{shard_id}.log", text.encode())

    def record_failure(self, shard_id: str, error: str, attempts: int) -> None:
        self._write_json(f"run/failed/{shard_id}.json", {"error": error, "attempts": attempts})

    def clear_failure(self, shard_id: str) -> None:
        """Forget a failure recorded by an earlier run (the shard has now completed)."""
        self.retry.call(lambda: self.output.remove(f"run/failed/{shard_id}.json"),
                        what=self.output.uri_of(f"run/failed/{shard_id}.json"))

    def failed_shards(self) -> dict[str, dict]:
        return {
            name.removesuffix(".json"): self.output.read_json(f"run/failed/{name}")
            for name in self.output.list("run/failed")
            if name.endswith(".json") and ".tmp-" not in name
        }

    def record_stall(self, shard_id: str, stall: dict) -> None:
        """Note that ``shard_id``'s worker showed no sign of life and was replaced
        (:mod:`labeler.runtime.liveness`); the shard was requeued."""
        self._write_json(f"run/stalled/{shard_id}.json", stall)

    def stalled_shards(self) -> dict[str, dict]:
        """The stalls recorded so far, by shard."""
        return {
            name.removesuffix(".json"): self.output.read_json(f"run/stalled/{name}")
            for name in self.output.list("run/stalled")
            if name.endswith(".json") and ".tmp-" not in name
        }

    # -- run-level facts -----------------------------------------------------------------
    def write_categories(self, categories: list[dict]) -> None:
        self.output.write_json(parts.RUN_CATEGORIES, categories)

    def read_categories(self) -> list[dict] | None:
        path = parts.RUN_CATEGORIES
        return self.output.read_json(path) if self.output.exists(path) else None

    def write_listing(self, facts: dict) -> None:
        """What the last listing of the input skipped (``hidden_skipped``, ``hidden_examples``)."""
        self.output.write_json("run/listing.json", facts)

    def read_listing(self) -> dict:
        path = "run/listing.json"
        return self.output.read_json(path) if self.output.exists(path) else {}

    def write_progress(self, progress: dict) -> None:
        """One attempt, no retry: a heartbeat must never hold up the driver."""
        self.output.write_json("run/progress.json", progress)

    def read_progress(self) -> dict | None:
        path = "run/progress.json"
        return self.output.read_json(path) if self.output.exists(path) else None
