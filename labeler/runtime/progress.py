"""The driver's progress: a bar on stderr (images/s, ETA, failures) and a heartbeat file.

On a terminal the bar redraws in place; without one (a log file, CI, a cluster job's log) it
would leave a line per redraw, so progress is logged as plain lines instead, at most every
:data:`PLAIN_PROGRESS_SECONDS` and when the last shard is done.

The heartbeat (``run/progress.json``) lets ``labeler status`` tell a running job from one whose
driver is gone, and report the job's current speed. Each done shard is handed to the run's
stats roll-up (:mod:`labeler.runtime.rollup`), which writes a group's summary once it is whole.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from typing import TextIO

from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from labeler.runtime.executor import ShardEvents
from labeler.runtime.rollup import RollUpWriter
from labeler.runtime.run_folder import RunFolder

logger = logging.getLogger(__name__)

#: Seconds between two writes of ``run/progress.json``.
HEARTBEAT_WRITE_SECONDS = 10.0
#: Without a terminal: seconds between two progress lines.
PLAIN_PROGRESS_SECONDS = 30.0


class DriverProgress(ShardEvents):
    """Counts what this run did, shows it, and writes the heartbeat.

    Args:
        run: the run folder (for the heartbeat).
        total_images: images in the whole plan.
        pending: the shards this run has to do (``shard_id``, ``n_images``).
        enabled: show progress (a bar on a terminal, plain log lines otherwise).
        stream: where the bar goes (default stderr); whether it is a terminal picks the form.
        rollup: rolls the done shards' stats up as groups complete (None: not rolled up).
    """

    def __init__(self, run: RunFolder, total_images: int, pending: list[dict], enabled: bool,
                 stream: TextIO | None = None, rollup: RollUpWriter | None = None) -> None:
        stream = stream or sys.stderr
        self.run = run
        self.rollup = rollup
        self.total_images = total_images
        self.sizes = {shard["shard_id"]: shard["n_images"] for shard in pending}
        self.images_pending = sum(self.sizes.values())
        self.started = time.time()
        self.images_done = 0
        self.failed_images = 0
        self.failed_shards = 0
        self.workers = (0, 0)
        self._last_write = 0.0
        self.plain = enabled and not _is_terminal(stream)
        self._last_line = float("-inf")
        self.bar = tqdm(
            total=total_images,
            initial=total_images - self.images_pending,
            unit="img",
            desc="labeling",
            disable=not enabled or self.plain,
            dynamic_ncols=True,
            file=stream,
            smoothing=0.05,
        )
        self.bar.set_postfix(failed=0)
        self.write_heartbeat("running")

    @contextlib.contextmanager
    def logging_above_bar(self) -> Iterator[None]:
        """Route console log records through the bar so they do not break it."""
        if self.bar.disable:
            yield
            return
        with logging_redirect_tqdm():
            yield

    def shard_done(self, shard_id: str, stats: dict) -> None:
        if self.rollup is not None:
            self.rollup.shard_done(shard_id)
        self.images_done += stats["images"]
        self.failed_images += stats["failed"]
        self.bar.update(stats["images"])
        self.bar.set_postfix(failed=self.failed_images, refresh=False)
        finished = self.images_done >= self.images_pending
        if self.plain and (finished or time.monotonic() - self._last_line >= PLAIN_PROGRESS_SECONDS):
            self._log_line()

    def _log_line(self) -> None:
        """One plain progress line: done of total, speed, ETA, failures."""
        self._last_line = time.monotonic()
        done = self.total_images - self.images_pending + self.images_done
        rate = self.rate()
        remaining = self.images_pending - self.images_done
        eta = f", ETA {_duration(remaining / rate)}" if rate and remaining else ""
        speed = f", {rate:.2f} images/s" if rate else ""
        logger.info("labeled %d of %d images (%.0f%%)%s%s, %d failed", done, self.total_images,
                    100.0 * done / max(1, self.total_images), speed, eta, self.failed_images)

    def shard_failed(self, shard_id: str, failure: dict) -> None:
        self.failed_shards += 1
        self.bar.set_postfix(failed=self.failed_images, failed_shards=self.failed_shards,
                             refresh=False)

    def tick(self, workers_ready: int, workers: int) -> None:
        self.workers = (workers_ready, workers)
        self.bar.refresh()
        if time.monotonic() - self._last_write >= HEARTBEAT_WRITE_SECONDS:
            self.write_heartbeat("running")

    def rate(self) -> float | None:
        """Images per second of this run so far (None before the first shard)."""
        elapsed = time.time() - self.started
        return self.images_done / elapsed if self.images_done and elapsed > 0 else None

    def write_heartbeat(self, state: str) -> None:
        self._last_write = time.monotonic()
        rate = self.rate()
        remaining = self.images_pending - self.images_done
        try:
            self.run.write_progress({
                "state": state,
                "driver": {"host": socket.gethostname(), "pid": os.getpid()},
                "started": self.started,
                "updated": time.time(),
                "images_done_this_run": self.images_done,
                "images_pending_at_start": self.images_pending,
                "failed_images_this_run": self.failed_images,
                "failed_shards": self.failed_shards,
                "images_per_second": rate,
                "eta_seconds": remaining / rate if rate else None,
                "workers_ready": self.workers[0],
                "workers": self.workers[1],
            })
        except Exception as error:  # noqa: BLE001 - the heartbeat never stops the run
            logger.debug("could not write the heartbeat: %s", error)

    def close(self, state: str) -> None:
        self.bar.close()
        self.write_heartbeat(state)


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _duration(seconds: float) -> str:
    """``1h02m``, ``3m05s``, ``42s``."""
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"
