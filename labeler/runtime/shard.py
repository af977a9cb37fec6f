"""Processing one shard: read, decode, label in batches, encode, commit the shard's parts.

Three stages overlap so the model does not wait: reading and decoding run on a background
thread, a bounded number of batches ahead of the model (:class:`Prefetcher`); the host work after
the model (relabelling, resize, mask encoding, rows) runs on the worker's post-processing pool
(:mod:`labeler.runtime.postprocess`) while the model labels the next batch; and a worker may run
two shards at once, one on the model while the other prefetches, or drains its pool and commits
(the model is taken in turn, :attr:`ShardProcessor.model_turn`). Bad images become
``failed`` rows with a reason; they never stop the shard. A batch that runs out of accelerator
memory is split in halves down to single images before an image is recorded as failed with
``out_of_memory``. Any other error that hits every image of a batch, even one image at a time, is
not the data's fault: it propagates so the driver can retry the shard and, after its attempts,
record the shard as failed. An error in the host work of one image becomes that image's
``postprocess_error`` row. The shard's log records (of the threads working for it) go to
``run/logs/<shard>.log``.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

from labeler.io.decode import DEFAULT_MAX_DECODED_PIXELS, ImageDecodeError, decode_image
from labeler.io.folders import Folder
from labeler.io.identity import comparable
from labeler.io.policy import InputPolicy
from labeler.io.reading import read_many
from labeler.io.refs import InputRef
from labeler.methods.base import ImageLabels, Segmenter
from labeler.output import schema
from labeler.output.failures import (
    METHOD_ERROR,
    OUT_OF_MEMORY,
    POSTPROCESS_ERROR,
    read_failure_reason,
)
from labeler.output.rows import (
    AnnotationRow,
    ImageRow,
    Provenance,
    failed_image_row,
    labeled_rows,
)
from labeler.runtime.commit import commit_shard
from labeler.runtime.liveness import LifeSigns
from labeler.runtime.postprocess import OrderedResults, PostProcessPool
from labeler.runtime.run_folder import RunFolder

logger = logging.getLogger(__name__)

#: Decoded batches kept ready ahead of the model (bounds the worker's memory).
PREFETCH_BATCHES = 2
#: The key of a manifest entry, once read, holding the identity of the bytes read
#: (:mod:`labeler.io.identity`); the plan's ``identity`` is what the listing saw.
READ_IDENTITY = "input_identity"

T = TypeVar("T")


@dataclass
class ShardRows:
    """Rows collected for one shard's image and annotation parts."""

    images: list[ImageRow] = field(default_factory=list)
    annotations: list[AnnotationRow] = field(default_factory=list)

    def add(self, image: ImageRow, annotations: list[AnnotationRow]) -> None:
        """One image's row and its annotation rows."""
        self.images.append(image)
        self.annotations += annotations


def failed_row(entry: dict, reason: str, detail: str, shard_id: str) -> ImageRow:
    """The image row of a manifest entry that produced no labels (with the identity of what
    was read, when it was)."""
    return failed_image_row(entry["uri"], entry["image_id"], reason, detail, shard_id,
                            entry.get("file_name"), entry.get(READ_IDENTITY))


@dataclass
class Batch:
    """Up to ``batch_size`` decoded images, plus the images that failed before the model."""

    images: list[tuple[dict, np.ndarray, tuple[int, int], int]] = field(default_factory=list)
    """(entry, (h, w, 3) pixels, the stored image's (height, width), the decode scale) per
    image."""
    failures: list[tuple[dict, str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class ImageFailure:
    """The outcome of labeling one image that did not produce labels."""

    reason: str
    detail: str


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` says the device (or host) ran out of memory for this batch."""
    import torch

    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(error, oom_type):
        return True
    if isinstance(error, MemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def _free_accelerator_memory() -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


class Prefetcher(Generic[T]):
    """Runs a producer on a background thread, at most ``depth`` items ahead of the consumer.

    Iterate to consume; an exception in the producer is raised in the consumer. Leaving the
    ``with`` block (normally or by an exception) stops the producer and joins its thread.
    """

    _END = object()

    def __init__(self, produce: Callable[[], Iterator[T]], depth: int = PREFETCH_BATCHES) -> None:
        if depth < 1:
            raise ValueError("depth must be >= 1")
        self._produce = produce
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="labeler-prefetch", daemon=True)
        #: seconds the consumer spent waiting for the producer
        self.waited = 0.0

    def __enter__(self) -> Prefetcher[T]:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def __iter__(self) -> Iterator[T]:
        while True:
            started = time.perf_counter()
            item = self._queue.get()
            self.waited += time.perf_counter() - started
            if item is self._END:
                return
            if isinstance(item, _ProducerError):
                raise item.error
            yield item

    def _run(self) -> None:
        try:
            for item in self._produce():
                if not self._put(item):
                    return
        except BaseException as error:  # noqa: BLE001 - handed to the consumer
            self._put(_ProducerError(error))
            return
        self._put(self._END)

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False


@dataclass(frozen=True)
class _ProducerError:
    error: BaseException


_working_for = threading.local()


@contextmanager
def working_for(shard_id: str) -> Iterator[None]:
    """Tag this thread's log records with ``shard_id`` while the block runs (see
    :func:`capture_log`); threads of a worker serve different shards at once."""
    before = getattr(_working_for, "shard_id", None)
    _working_for.shard_id = shard_id
    try:
        yield
    finally:
        _working_for.shard_id = before


class _ShardRecords(logging.Filter):
    """Records of threads working for one shard, and of threads working for none."""

    def __init__(self, shard_id: str | None) -> None:
        super().__init__()
        self.shard_id = shard_id

    def filter(self, record: logging.LogRecord) -> bool:
        tag = getattr(_working_for, "shard_id", None)
        return self.shard_id is None or tag is None or tag == self.shard_id


class _LevelHolds:
    """Lowers a logger while captures need it; thread-safe and counted, so overlapping captures
    (two shards in threads of one process, entering and leaving in any order) never leave it
    changed.

    The logger runs at the lowest level any open capture asked for, unless its own level is
    already lower, and gets back the level it had before the first capture when the last ends.
    """

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._lock = threading.Lock()
        self._held: Counter[int] = Counter()
        self._before = logging.NOTSET

    @contextmanager
    def hold(self, level: int) -> Iterator[None]:
        with self._lock:
            if not self._held:
                self._before = self._logger.level
            self._held[level] += 1
            self._apply()
        try:
            yield
        finally:
            with self._lock:
                self._held[level] -= 1
                if not self._held[level]:
                    del self._held[level]
                self._apply()

    def _apply(self) -> None:
        """One ``setLevel`` (never a passing flip that would drop another capture's records)."""
        target = self._before
        if self._held:
            parent = self._logger.parent
            effective = self._before or (parent.getEffectiveLevel() if parent else logging.WARNING)
            if effective > min(self._held):
                target = min(self._held)
        self._logger.setLevel(target)


_OWN_LEVEL = _LevelHolds(logging.getLogger("labeler"))


@contextmanager
def capture_log(level: int = logging.INFO, shard_id: str | None = None) -> Iterator[io.StringIO]:
    """Collect the log records emitted (by any thread) while the block runs.

    Records of any library at WARNING and above are kept, and labeler's own from ``level`` (its
    logger is lowered to ``level`` while any capture needs it: :class:`_LevelHolds`). With
    ``shard_id``, records of threads tagged for another shard (:func:`working_for`) are left out.
    """
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setLevel(level)
    handler.addFilter(_ShardRecords(shard_id))
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    with _OWN_LEVEL.hold(level):
        root.addHandler(handler)
        try:
            yield buffer
        finally:
            root.removeHandler(handler)
            handler.close()


@dataclass(frozen=True)
class _Finished:
    """One image's rows from the post-processing pool, with the seconds its job took."""

    image: ImageRow
    annotations: list[AnnotationRow]
    seconds: float = 0.0


class ShardProcessor:
    """Applies one loaded segmenter to shards of a run.

    ``process`` may be called from two threads at once (a Ray actor running two shards): the
    model runs one shard at a time, in the order the calls reach it, while the other shard reads
    ahead or finishes its post-processing and commits.

    Args:
        segmenter: built once per worker (see :meth:`labeler.config.JobConfig.build_segmenter`).
            With ``label_raw``/``finish`` (:class:`labeler.methods.base.TwoStepSegmenter`) the
            host step runs on the pool; otherwise ``label`` runs on the model's thread and the
            pool encodes.
        batch_size: images per model call.
        max_pixels: decompression-bomb limit passed to the decoder.
        decode_side: images are decoded down to this side (the method's input side:
            :meth:`labeler.config.JobConfig.decode_side`); None: full size. Each image row
            records the scale (``decode_scale``).
        run_id: recorded with every annotation.
        storage_options: fsspec options for reading inputs.
        worker: facts about the worker (host, pid, device) recorded in the shard's stats.
        postprocess_threads: threads of the post-processing pool.
        policy: which URIs may be read (:mod:`labeler.io.policy`); None: any. A refused image
            is a failed image (``protocol_not_allowed``, ``outside_input``), never read.
        life: where this worker counts its signs of life (a shard starts, an image is read, a
            batch leaves the model: :mod:`labeler.runtime.liveness`); None: not counted.
    """

    def __init__(self, segmenter: Segmenter, batch_size: int, max_pixels: int | None, run_id: str,
                 storage_options: dict | None = None, worker: dict | None = None,
                 postprocess_threads: int = 1, policy: InputPolicy | None = None,
                 life: LifeSigns | None = None, decode_side: int | None = None) -> None:
        self.segmenter = segmenter
        self.decode_side = decode_side
        self.life = life
        self.policy = policy
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        self.run_id = run_id
        self.storage_options = storage_options
        self.worker = worker or {}
        self.category_names = {c["id"]: c["name"] for c in segmenter.categories}
        provenance = segmenter.provenance()
        self.provenance = Provenance(method=provenance.method, model=provenance.model,
                                     resource_digest=provenance.resource_digest, run_id=run_id)
        self.two_step = callable(getattr(segmenter, "label_raw", None)) and callable(
            getattr(segmenter, "finish", None))
        self.pool = PostProcessPool(postprocess_threads)
        #: held by the shard whose batches are on the model
        self.model_turn = threading.Lock()

    def close(self) -> None:
        """Stop the post-processing threads (after the last shard)."""
        self.pool.close()

    def process(self, output: Folder, shard_id: str, attempt: int = 1,
                read_uris: dict[str, str] | None = None) -> dict:
        """Label one shard and commit its parts, stats and log. Returns the stats.

        ``read_uris``: what to read for entries whose stored URI is redacted (redacted -> full
        URI, held in memory only).
        """
        run = RunFolder(output)
        with working_for(shard_id), capture_log(shard_id=shard_id) as log:
            logger.info("shard %s attempt %d on %s", shard_id, attempt, self.worker or "this process")
            try:
                stats = self._process(run, shard_id, read_uris or {})
                stats["attempt"] = attempt
                run.write_stats(shard_id, stats)
                logger.info("shard %s: %d labeled, %d failed in %.1f s", shard_id,
                            stats["labeled"], stats["failed"], stats["seconds"])
                return stats
            except Exception:
                logger.exception("shard %s attempt %d failed", shard_id, attempt)
                raise
            finally:
                _write_log_quietly(run, shard_id, log.getvalue())

    def _beat(self, run: RunFolder) -> None:
        if self.life is not None:
            self.life.beat(run.output)

    def _process(self, run: RunFolder, shard_id: str, read_uris: dict[str, str]) -> dict:
        started, started_at = time.perf_counter(), time.time()
        self._beat(run)
        entries = run.read_manifest(shard_id)
        timings = {"read": 0.0, "decode": 0.0, "label": 0.0, "encode": 0.0}
        changed: list[str] = []  # URIs whose bytes read are not the version planned
        rows = ShardRows()
        results: OrderedResults[_Finished] = self.pool.results(
            2 * self.batch_size + self.pool.threads)

        def produce() -> Iterator[Batch]:
            with working_for(shard_id):
                yield from self._batches(entries, timings, lambda: self._beat(run), read_uris,
                                         changed)

        try:
            with Prefetcher(produce) as batches:
                wait_started = time.perf_counter()
                with self.model_turn:
                    wait_model = time.perf_counter() - wait_started
                    method_before = dict(self.segmenter.timer.seconds)
                    for batch in batches:
                        for entry, reason, detail in batch.failures:
                            results.put(_Finished(failed_row(entry, reason, detail, shard_id), []))
                        if batch.images:
                            self._label_batch(batch.images, results, shard_id, timings)
                            self._beat(run)
                        self._collect(results.ready(), rows, timings)
                    method_timings = _timer_delta(self.segmenter, method_before)
            self._collect(results.drain(), rows, timings)
        except BaseException:
            results.cancel()
            raise
        timings["wait_input"] = batches.waited
        rows.images.sort(key=lambda row: row["image_id"])
        commit_started = time.perf_counter()
        part_records = commit_shard(run, shard_id, rows.images, rows.annotations)
        timings["commit"] = time.perf_counter() - commit_started
        return {
            "shard_id": shard_id,
            "images": len(rows.images),
            "labeled": sum(r["status"] == schema.IMAGE_STATUS_LABELED for r in rows.images),
            "failed": sum(r["status"] == schema.IMAGE_STATUS_FAILED for r in rows.images),
            "annotations": len(rows.annotations),
            "failure_reasons": dict(Counter(r["reason"] for r in rows.images if r["reason"])),
            "retryable_failures": sum(bool(r.get("retryable")) for r in rows.images),
            # images whose version read is not the one listed when the run was planned
            "inputs_changed_since_plan": len(changed),
            "parts": part_records,
            "seconds": time.perf_counter() - started,
            "started_at": started_at,
            "finished_at": time.time(),
            "timings": {name: round(value, 4) for name, value in timings.items()},
            "method_timings": method_timings,
            # How the stages overlapped: seconds this shard waited for the model (the previous
            # shard on it) and the model's thread waited for the pool (backpressure, last drain).
            "pipeline": {"postprocess_threads": self.pool.threads,
                         "wait_model": round(wait_model, 4),
                         "wait_postprocess": round(results.waited, 4)},
            "worker": self.worker,
            "decode_side": self.decode_side,
        }

    @staticmethod
    def _collect(finished: Iterator[_Finished], rows: ShardRows, timings: dict) -> None:
        for result in finished:
            rows.add(result.image, result.annotations)
            timings["encode"] += result.seconds

    # -- input (runs on the prefetch thread) ---------------------------------------------
    def _batches(self, entries: list[dict], timings: dict, beat: Callable[[], None],
                 read_uris: dict[str, str], changed: list[str]) -> Iterator[Batch]:
        """Read and decode the shard's images in order, cut into batches of decoded images;
        ``beat`` is called after each read (a sign of life); ``read_uris``: what to read for
        entries stored redacted. Each entry read carries the identity of its bytes; the URIs
        whose identity differs from the plan's (replaced since the listing) go to ``changed``:
        they are labeled from what was read, which their rows record."""
        refs = [InputRef.from_dict(e["ref"]) if "ref" in e else InputRef(uri=e["uri"]) for e in entries]
        refs = [dataclasses.replace(ref, read_uri=read_uris[ref.uri]) if ref.uri in read_uris
                else ref for ref in refs]
        refusals = [self.policy.refusal(ref) if self.policy else None for ref in refs]
        window = max(self.batch_size, 16)
        allowed = [ref for ref, refusal in zip(refs, refusals) if refusal is None]
        reads = read_many(allowed, storage_options=self.storage_options, window=window)
        batch = Batch()
        for entry, refusal in zip(entries, refusals):
            if refusal is not None:  # never read: the input policy does not allow it
                batch.failures.append((entry, *refusal))
                continue
            read_started = time.perf_counter()
            _, data, identity = next(reads)
            beat()
            if identity is not None:
                entry = {**entry, READ_IDENTITY: identity}
                if comparable(entry.get("identity"), identity) and entry["identity"] != identity:
                    logger.warning("%s changed since the run was planned (%s, now %s): "
                                   "labeling what was read", entry["uri"], entry["identity"],
                                   identity)
                    changed.append(entry["uri"])
            decode_started = time.perf_counter()
            timings["read"] += decode_started - read_started
            if isinstance(data, BaseException):
                batch.failures.append((entry, read_failure_reason(data, entry["uri"]),
                                       f"{type(data).__name__}: {data}"))
                continue
            try:
                options = {"max_pixels": self.max_pixels} if self.max_pixels else {}
                decoded = decode_image(data, max_decoded_pixels=DEFAULT_MAX_DECODED_PIXELS,
                                       needed_side=self.decode_side, **options)
            except ImageDecodeError as error:
                batch.failures.append((entry, error.reason, error.detail))
                continue
            finally:
                timings["decode"] += time.perf_counter() - decode_started
            batch.images.append((entry, decoded.pixels,
                                 (decoded.original_height, decoded.original_width), decoded.scale))
            if len(batch.images) == self.batch_size:
                yield batch
                batch = Batch()
        if batch.images or batch.failures:
            yield batch

    # -- the model -----------------------------------------------------------------------
    def _label_batch(self, batch: list[tuple[dict, np.ndarray, tuple[int, int], int]],
                     results: OrderedResults, shard_id: str, timings: dict) -> None:
        """Run the model on a batch and hand each image's output to the pool, in order."""
        images = [pixels for _, pixels, _, _ in batch]
        started = time.perf_counter()
        outcomes = self._label_isolating(images)
        timings["label"] += time.perf_counter() - started
        for (entry, pixels, stored, scale), outcome in zip(batch, outcomes):
            if isinstance(outcome, ImageFailure):
                results.put(_Finished(failed_row(entry, outcome.reason, outcome.detail, shard_id),
                                      []))
            else:
                results.submit(self._finish_image, entry, pixels.shape[:2], stored, scale,
                               outcome, shard_id)

    def _label_isolating(self, images: list[np.ndarray]) -> list:
        """Label a batch; on an error, retry its images one by one to find the bad ones."""
        try:
            return self._label_splitting(images)
        except Exception as batch_error:  # isolate the image that breaks the batch
            if len(images) == 1:
                raise
            logger.warning("batch failed (%s); retrying its images one by one", batch_error)
            outcomes: list = []
            for image in images:
                try:
                    outcomes += self._label_splitting([image])
                except Exception as error:  # noqa: BLE001 - becomes the image's failure row
                    outcomes.append(ImageFailure(METHOD_ERROR, f"{type(error).__name__}: {error}"))
            if all(isinstance(o, ImageFailure) and o.reason == METHOD_ERROR for o in outcomes):
                raise  # the batch's own error: not the data's fault
            return outcomes

    def _label_splitting(self, images: list[np.ndarray]) -> list:
        """Label a batch (the device step only, for a two-step segmenter), splitting it in
        halves on out-of-memory errors down to one image."""
        detail = None
        try:
            if self.two_step:
                return list(self.segmenter.label_raw(images))
            return list(self.segmenter.label(images))
        except Exception as error:  # only out-of-memory is handled here
            if not is_out_of_memory(error):
                raise
            detail = f"{type(error).__name__}: {str(error)[:300]}"
        # Outside the except block, so the error's frames (and their tensors) are released.
        _free_accelerator_memory()
        if len(images) == 1:
            logger.warning("one image does not fit in memory: %s", detail)
            return [ImageFailure(OUT_OF_MEMORY, detail)]
        half = len(images) // 2
        logger.warning("out of memory on a batch of %d; splitting it (%s)", len(images), detail)
        return self._label_splitting(images[:half]) + self._label_splitting(images[half:])

    # -- after the model (runs on the post-processing pool) ------------------------------
    def _finish_image(self, entry: dict, decoded: tuple[int, int], stored: tuple[int, int],
                      scale: int, raw, shard_id: str) -> _Finished:
        """The host step of one image: its labels from the model's output, then its rows; an
        error here is the image's ``postprocess_error`` row.

        Labels come at the ``decoded`` (height, width); an image the decoder downscaled has its
        map scaled back (nearest) to the ``stored`` size as index maps over the label grid
        (:meth:`~labeler.methods.base.ImageLabels.resized`): no full-size map is built, the
        encoder reads the grid.
        """
        started = time.perf_counter()
        height, width = stored
        with working_for(shard_id):
            try:
                labels = self.segmenter.finish(raw) if self.two_step else raw
                if labels.shape != decoded:
                    raise ValueError(f"label map {labels.shape} for an image of {decoded}")
                labels = labels.resized(height, width)
                image, annotations = self._labeled_rows(entry, height, width, labels, shard_id,
                                                        scale)
            except Exception as error:  # noqa: BLE001 - becomes the image's failure row
                logger.warning("post-processing failed on %s: %s", entry["uri"], error)
                detail = f"{type(error).__name__}: {error}"
                return _Finished(failed_row(entry, POSTPROCESS_ERROR, detail, shard_id), [],
                                 time.perf_counter() - started)
        return _Finished(image, annotations, time.perf_counter() - started)

    def _labeled_rows(self, entry: dict, height: int, width: int, labels: ImageLabels,
                      shard_id: str, decode_scale: int) -> tuple[ImageRow, list[AnnotationRow]]:
        return labeled_rows(entry["uri"], entry["image_id"], width, height, labels,
                            self.category_names, self.provenance, shard_id, entry.get("file_name"),
                            decode_scale, input_identity=entry.get(READ_IDENTITY))

def _write_log_quietly(run: RunFolder, shard_id: str, text: str) -> None:
    """Write the shard's log; a storage error here must not hide the shard's own outcome."""
    try:
        run.write_log(shard_id, text)
    except Exception as error:  # noqa: BLE001 - the log is a convenience, never the result
        logger.warning("could not write the log of shard %s: %s", shard_id, error)


def _timer_delta(segmenter: Segmenter, before: dict[str, float]) -> dict[str, float]:
    after = segmenter.timer.seconds
    return {name: round(value - before.get(name, 0.0), 4) for name, value in after.items()}
