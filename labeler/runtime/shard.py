"""Processing one shard: read, decode, label in batches, encode, commit the shard's parts.

Reading and decoding run on a background thread, a bounded number of batches ahead of the
model (:class:`Prefetcher`), so the accelerator does not wait for storage. Bad images become
``failed`` rows with a reason; they never stop the shard. A batch that runs out of accelerator
memory is split in halves down to single images before an image is recorded as failed with
``out_of_memory``. Any other error that hits every image of a batch, even one image at a time, is
not the data's fault: it propagates so the driver can retry the shard and, after its attempts,
record the shard as failed. The shard's log records go to ``run/logs/<shard>.log``.
"""

from __future__ import annotations

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
import pyarrow as pa
import pyarrow.parquet as pq

from labeler.io.decode import DEFAULT_MAX_DECODED_PIXELS, ImageDecodeError, decode_image
from labeler.io.folders import Folder
from labeler.io.policy import InputPolicy
from labeler.io.reading import read_many
from labeler.io.refs import InputRef
from labeler.methods.base import MAX_LABELS_PER_IMAGE, ImageLabels, Segmenter
from labeler.methods.label_maps import resize_labels
from labeler.output import schema
from labeler.output.rle import encode_label_map
from labeler.runtime.run_folder import RunFolder

logger = logging.getLogger(__name__)

#: Decoded batches kept ready ahead of the model (bounds the worker's memory).
PREFETCH_BATCHES = 2
#: ``reason`` of an image that does not fit in accelerator memory even alone.
OUT_OF_MEMORY = "out_of_memory"
#: ``reason`` of an image the method raised on (while the rest of its batch labeled).
METHOD_ERROR = "method_error"
#: ``reason`` of an image whose bytes could not be read.
READ_ERROR = "read_error"

T = TypeVar("T")


@dataclass
class ShardRows:
    """Rows collected for one shard's ``images.parquet`` and ``annotations.parquet``."""

    images: list[dict] = field(default_factory=list)
    annotations: list[dict] = field(default_factory=list)

    def fail(self, entry: dict, reason: str, detail: str, shard_id: str) -> None:
        self.images.append(
            {
                "uri": entry["uri"],
                "file_name": entry.get("file_name", entry["uri"]),
                "image_id": entry["image_id"],
                "status": schema.IMAGE_STATUS_FAILED,
                "reason": reason,
                "detail": detail[:500],
                "width": None,
                "height": None,
                "n_annotations": 0,
                "shard_id": shard_id,
            }
        )


@dataclass
class Batch:
    """Up to ``batch_size`` decoded images, plus the images that failed before the model."""

    images: list[tuple[dict, np.ndarray, tuple[int, int]]] = field(default_factory=list)
    """(entry, (h, w, 3) pixels, the stored image's (height, width)) per image."""
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


@contextmanager
def capture_log(level: int = logging.INFO) -> Iterator[io.StringIO]:
    """Collect the log records emitted (by any thread) while the block runs.

    Records of any library at WARNING and above are kept, and labeler's own from ``level`` (its
    logger is lowered to ``level`` for the duration if needed).
    """
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setLevel(level)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s")
    )
    root, own = logging.getLogger(), logging.getLogger("labeler")
    own_level = own.level
    if own.getEffectiveLevel() > level:
        own.setLevel(level)
    root.addHandler(handler)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)
        own.setLevel(own_level)
        handler.close()


class ShardProcessor:
    """Applies one loaded segmenter to shards of a run.

    Args:
        segmenter: built once per worker (see :func:`labeler.methods.registry.build_segmenter`).
        batch_size: images per model call.
        max_pixels: decompression-bomb limit passed to the decoder.
        run_id: recorded with every annotation.
        storage_options: fsspec options for reading inputs.
        worker: facts about the worker (host, pid, device) recorded in the shard's stats.
        policy: which URIs may be read (:mod:`labeler.io.policy`); None: any. A refused image
            is a failed image (``protocol_not_allowed``, ``outside_input``), never read.
    """

    def __init__(self, segmenter, batch_size: int, max_pixels: int | None, run_id: str,
                 storage_options: dict | None = None, worker: dict | None = None,
                 policy: InputPolicy | None = None) -> None:
        self.segmenter = segmenter
        self.policy = policy
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        self.run_id = run_id
        self.storage_options = storage_options
        self.worker = worker or {}
        self.category_names = {c["id"]: c["name"] for c in segmenter.categories}
        provenance = segmenter.provenance()
        self.provenance = {
            "method": provenance["method"],
            "model": provenance["model"],
            "embedding_set": provenance.get("embedding_set"),
        }

    def process(self, output: Folder, shard_id: str, attempt: int = 1) -> dict:
        """Label one shard and commit its parts, stats and log. Returns the stats."""
        run = RunFolder(output)
        with capture_log() as log:
            logger.info("shard %s attempt %d on %s", shard_id, attempt, self.worker or "this process")
            try:
                stats = self._process(run, shard_id)
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

    def _process(self, run: RunFolder, shard_id: str) -> dict:
        started, started_at = time.perf_counter(), time.time()
        entries = run.read_manifest(shard_id)
        timings = {"read": 0.0, "decode": 0.0, "label": 0.0, "encode": 0.0}
        method_before = dict(self.segmenter.timer.seconds)
        rows = ShardRows()
        produce = lambda: self._batches(entries, timings)
        with Prefetcher(produce) as batches:
            for batch in batches:
                for entry, reason, detail in batch.failures:
                    rows.fail(entry, reason, detail, shard_id)
                if batch.images:
                    self._label_batch(batch.images, rows, shard_id, timings)
        timings["wait_input"] = batches.waited
        rows.images.sort(key=lambda row: row["image_id"])
        commit_started = time.perf_counter()
        self._commit(run, shard_id, rows)
        timings["commit"] = time.perf_counter() - commit_started
        return {
            "shard_id": shard_id,
            "images": len(rows.images),
            "labeled": sum(r["status"] == schema.IMAGE_STATUS_LABELED for r in rows.images),
            "failed": sum(r["status"] == schema.IMAGE_STATUS_FAILED for r in rows.images),
            "annotations": len(rows.annotations),
            "failure_reasons": dict(Counter(r["reason"] for r in rows.images if r["reason"])),
            "seconds": time.perf_counter() - started,
            "started_at": started_at,
            "finished_at": time.time(),
            "timings": {name: round(value, 4) for name, value in timings.items()},
            "method_timings": _timer_delta(self.segmenter, method_before),
            "worker": self.worker,
        }

    # -- input (runs on the prefetch thread) ---------------------------------------------
    def _batches(self, entries: list[dict], timings: dict) -> Iterator[Batch]:
        """Read and decode the shard's images in order, cut into batches of decoded images."""
        refs = [InputRef.from_dict(e["ref"]) if "ref" in e else InputRef(uri=e["uri"]) for e in entries]
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
            _, data = next(reads)
            decode_started = time.perf_counter()
            timings["read"] += decode_started - read_started
            if isinstance(data, BaseException):
                batch.failures.append((entry, READ_ERROR, f"{type(data).__name__}: {data}"))
                continue
            try:
                options = {"max_pixels": self.max_pixels} if self.max_pixels else {}
                decoded = decode_image(data, max_decoded_pixels=DEFAULT_MAX_DECODED_PIXELS,
                                       **options)
            except ImageDecodeError as error:
                batch.failures.append((entry, error.reason, error.detail))
                continue
            finally:
                timings["decode"] += time.perf_counter() - decode_started
            batch.images.append(
                (entry, decoded.pixels, (decoded.original_height, decoded.original_width)))
            if len(batch.images) == self.batch_size:
                yield batch
                batch = Batch()
        if batch.images or batch.failures:
            yield batch

    # -- the model -----------------------------------------------------------------------
    def _label_batch(self, batch: list[tuple[dict, np.ndarray, tuple[int, int]]], rows: ShardRows,
                     shard_id: str, timings: dict) -> None:
        images = [pixels for _, pixels, _ in batch]
        started = time.perf_counter()
        outcomes = self._label_isolating(images)
        encode_started = time.perf_counter()
        timings["label"] += encode_started - started
        for (entry, _, size), outcome in zip(batch, outcomes):
            if isinstance(outcome, ImageFailure):
                rows.fail(entry, outcome.reason, outcome.detail, shard_id)
            else:
                self._add_labels(entry, size, outcome, rows, shard_id)
        timings["encode"] += time.perf_counter() - encode_started

    def _label_isolating(self, images: list[np.ndarray]) -> list[ImageLabels | ImageFailure]:
        """Label a batch; on an error, retry its images one by one to find the bad ones."""
        try:
            return self._label_splitting(images)
        except Exception as batch_error:  # isolate the image that breaks the batch
            if len(images) == 1:
                raise
            logger.warning("batch failed (%s); retrying its images one by one", batch_error)
            outcomes: list[ImageLabels | ImageFailure] = []
            for image in images:
                try:
                    outcomes += self._label_splitting([image])
                except Exception as error:  # noqa: BLE001 - becomes the image's failure row
                    outcomes.append(ImageFailure(METHOD_ERROR, f"{type(error).__name__}: {error}"))
            if all(isinstance(o, ImageFailure) and o.reason == METHOD_ERROR for o in outcomes):
                raise  # the batch's own error: not the data's fault
            return outcomes

    def _label_splitting(self, images: list[np.ndarray]) -> list[ImageLabels | ImageFailure]:
        """Label a batch, splitting it in halves on out-of-memory errors down to one image."""
        detail = None
        try:
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

    def _add_labels(self, entry: dict, size: tuple[int, int], labels: ImageLabels,
                    rows: ShardRows, shard_id: str) -> None:
        """Record an image's labels at its stored ``(height, width)``: a map of an image the
        decoder downscaled is scaled back (nearest), in the narrowest integer type."""
        height, width = size
        label_map = labels.label_map
        if label_map.shape != size:
            label_map = resize_labels(_narrow(label_map, len(labels.category_ids)), height, width)
        masks = encode_label_map(label_map, len(labels.category_ids))
        count = 0
        for index, (mask, category, score) in enumerate(zip(masks, labels.category_ids, labels.scores)):
            if mask.area == 0:
                continue
            rows.annotations.append(
                {
                    "id": entry["image_id"] * MAX_LABELS_PER_IMAGE + index,
                    "image_id": entry["image_id"],
                    "category_id": int(category),
                    "category_name": self.category_names[int(category)],
                    "segmentation_counts": mask.counts,
                    "segmentation_size": [mask.height, mask.width],
                    "area": mask.area,
                    "bbox": mask.bbox,
                    "iscrowd": 0,
                    "score": float(score),
                    "file_name": entry.get("file_name", entry["uri"]),
                    "run_id": self.run_id,
                    **self.provenance,
                }
            )
            count += 1
        rows.images.append(
            {
                "uri": entry["uri"],
                "file_name": entry.get("file_name", entry["uri"]),
                "image_id": entry["image_id"],
                "status": schema.IMAGE_STATUS_LABELED,
                "reason": None,
                "detail": None,
                "width": width,
                "height": height,
                "n_annotations": count,
                "shard_id": shard_id,
            }
        )

    def _commit(self, run: RunFolder, shard_id: str, rows: ShardRows) -> None:
        for name, table_schema, table_rows in (
            ("annotations.parquet", schema.ANNOTATIONS, rows.annotations),
            ("images.parquet", schema.IMAGES, rows.images),
        ):
            buffer = io.BytesIO()
            pq.write_table(pa.Table.from_pylist(table_rows, schema=table_schema), buffer)
            run.write_part(shard_id, name, buffer.getvalue())


def _narrow(label_map: np.ndarray, n_labels: int) -> np.ndarray:
    """An (H, W) label map (-1 for none) in int8/int16 when its labels fit: a quarter or half
    of the memory once scaled up to a huge image's size."""
    for dtype in (np.int8, np.int16):
        if n_labels <= np.iinfo(dtype).max:
            return label_map.astype(dtype, copy=False)
    return label_map


def _write_log_quietly(run: RunFolder, shard_id: str, text: str) -> None:
    """Write the shard's log; a storage error here must not hide the shard's own outcome."""
    try:
        run.write_log(shard_id, text)
    except Exception as error:  # noqa: BLE001 - the log is a convenience, never the result
        logger.warning("could not write the log of shard %s: %s", shard_id, error)


def _timer_delta(segmenter: Segmenter, before: dict[str, float]) -> dict[str, float]:
    after = segmenter.timer.seconds
    return {name: round(value - before.get(name, 0.0), 4) for name, value in after.items()}

