"""A worker's ceiling: the real shard path with a segmenter that costs nothing (or a set time).

``ShardProcessor`` (read, decode on its prefetch thread, the model, then relabel, encode and rows
on its post-processing pool, commit) runs over generated JPEG or PNG files, two shards at a time
as a worker's actor runs them, with a zero-cost two-step segmenter: its device step builds the
model input as the methods do (``images_to_model_input`` to 512 x 512 on ``--device``, timed as
``preprocess``), sleeps ``--model-ms-per-image`` per image to stand in for the model and hands
over Voronoi label maps of
``--segments`` regions at each image's size; its host step relabels them with the same
:func:`~labeler.methods.device_labels.finish_labels` the methods use on CPU. Figures:

* ``images_per_second`` over the whole run (wall clock: on a shared machine it measures the
  neighbours too, so the load average is printed beside every figure);
* seconds per image by stage (decode, preprocess, model, compact, encode, rows, commit; decode
  runs on the prefetch threads, preprocess and the model on the model's thread,
  compact/encode/rows on the pool);
* ``model_idle_fraction``: the share of wall time the simulated model is not running, i.e. waits
  for the rest (what a real model would spend idle);
* from thread CPU time, robust to a shared machine's neighbours: ``cpu_ms_per_image`` by stage
  and ``cpu_bound_images_per_second`` (the process's CPU time on one core);
* ``host_ms_per_image_with_accelerator``: the host CPU ms per image of a worker whose device
  step runs on an accelerator, where the relabelling (``_compact_on_device`` in
  :func:`~labeler.methods.device_labels.device_step`) runs on the device. On the CPU it is
  computed from the measured stage CPU times: ``process_total`` minus ``compact``, i.e. the sum
  of ``decode``, ``preprocess`` (the model input's resize, on the host in a CPU run: an upper
  bound for a worker that resizes on its accelerator, where only the copy of each image's
  bytes stays on the host), ``postprocess`` less ``compact`` (the encoding, rows and the pool's
  bookkeeping), ``commit`` and ``model_thread`` (the rest of the process: the reads, batching,
  the shard loop, the zero-cost model's Python; its sleep burns no CPU); it leaves out the
  device-to-host copy of the int32 map at the label grid, which a CPU run does not make. With
  ``--device cuda`` it is measured directly: the process's CPU time per image (``compact`` is
  then only the host step's return of labels already made on the device, ``preprocess`` the
  upload of the uint8 bytes and the resize's kernel launches), so the kernel launches, the
  waits and the copies are in it. ``host_images_per_second_with_accelerator`` is
  its inverse (one core).

Before the timed run a warm-up shard of ``WARMUP_IMAGES`` images goes through the same worker:
what is paid once per worker process (pyarrow imports pandas on its first table, the threads
start) is reported apart as ``warmup_s`` and ``warmup_cpu_s``, not spread over the images.

``--encoder`` measures the mask encoder alone at ``--size`` with 30 and 200 segments, one-pass
against the per-label pycocotools encoding it replaced (checked identical on the way).

    python bench/runtime_ceiling.py --images 128 --size 1024x768 --segments 30
    python bench/runtime_ceiling.py --images 128 --size 1024x768 --segments 30 --model-ms-per-image 10
    python bench/runtime_ceiling.py --images 128 --model-ms-per-image 10 --postprocess-threads 2
    python bench/runtime_ceiling.py --images 64 --size 1024x768 --segments 30 --s3 --json
    python bench/runtime_ceiling.py --images 128 --size 4032x3024
    python bench/runtime_ceiling.py --encoder --size 1024x768

Every figure is printed with the load average (1, 5, 15 min) before and after the run beside
it. With ``--json`` the last line printed is one JSON object of all figures.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import sys
import tempfile
import threading
import time
import timeit
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from labeler.io.decode import decode_image
from labeler.io.folders import Folder
from labeler.io.reading import read_image_bytes
from labeler.methods.base import ImageLabels, MethodProvenance, compact_resized_labels
from labeler.methods.device_labels import (
    PendingLabels,
    RawLabels,
    _compact_on_device,
    device_step,
    finish_labels,
)
from labeler.methods.preprocess import images_to_model_input, label_grid_size
from labeler.output import rle
from labeler.runtime.commit import commit_shard
from labeler.runtime.executor import SHARDS_IN_FLIGHT_PER_WORKER
from labeler.runtime.plan import plan_run
from labeler.runtime.run_folder import RunFolder
from labeler.runtime.shard import ShardProcessor
from labeler.timing import StageTimer
from tests.s3server import S3Server

#: Distinct images and label maps by default (fewer would let caches and tiny parts flatter the
#: figures: parts of repeated maps compress to a fraction of their real size).
DISTINCT = 64
#: The methods' default cap on the label grid's long side (``max_label_side``).
MAX_LABEL_SIDE = 1024
#: The Stable Diffusion methods' square model input side (``images_to_model_input``).
MODEL_INPUT_SIDE = 512
#: Low-resolution proposal scores per label-grid side on the device (upsampled, then argmax).
SCORE_STRIDE = 16
#: Images of the untimed warm-up shard (one-time costs of a worker process).
WARMUP_IMAGES = 4
#: Above this many pixels only FRESH_IMAGES distinct images are generated, the rest rolled.
FRESH_PIXELS = 4_000_000
FRESH_IMAGES = 8


def voronoi_labels(height: int, width: int, segments: int, rng: np.random.Generator) -> np.ndarray:
    """(height, width) int32 map of ``segments`` Voronoi regions with random weights."""
    centres = rng.random((segments, 2)) * (height, width)
    bias = rng.random(segments) * (height * width) / segments
    y = np.arange(height, dtype=np.float32)[:, None]
    x = np.arange(width, dtype=np.float32)[None, :]
    best = np.full((height, width), np.inf, np.float32)
    labels = np.zeros((height, width), np.int32)
    for index, (cy, cx) in enumerate(centres):
        distance = (y - cy) ** 2 + (x - cx) ** 2 + bias[index]
        closer = distance < best
        best[closer] = distance[closer]
        labels[closer] = index
    return labels


def winner_confidence(rng: np.random.Generator, shape: tuple[int, int],
                      segments: int) -> np.ndarray:
    """(h, w) float32 confidence as the methods give it: the winner's share of ``segments``
    candidates (DiffSeg: the winning proposal's value over their sum), so in [1/segments, 1]."""
    return (1 / segments + (1 - 1 / segments) * rng.random(shape, dtype=np.float32)).astype(
        np.float32)


def device_cycles_per_ms(device: torch.device) -> float:
    """GPU clock cycles of ``torch.cuda._sleep`` per millisecond, measured with CUDA events."""
    cycles = 10_000_000
    torch.cuda._sleep(cycles)  # warm-up
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(cycles)
    end.record()
    end.synchronize()
    return cycles / start.elapsed_time(end)


class ZeroCostSegmenter:
    """A two-step :class:`labeler.methods.base.Segmenter` whose model costs ``model_seconds`` per
    image, with ``distinct`` different label maps at the label grid (the image's size capped at
    ``MAX_LABEL_SIDE``, as the methods label).

    The device step (``label_raw``) first builds the model input as the methods do
    (``images_to_model_input`` on the device, timed as ``preprocess``; the simulated model does
    not read it). On the CPU it then (timed as ``model``) sleeps (a call that releases
    the GIL and burns no CPU, as a model on an accelerator) and hands over cached Voronoi maps
    with a winner-share confidence (:func:`winner_confidence`);
    the host step (``finish``, timed as ``compact``, on the pool's threads) relabels and resizes
    them as the methods do on CPU. On an accelerator the model burns its time on the device
    (``torch.cuda._sleep``, no host CPU) and the label maps are made there as the methods make
    them: per image, low-resolution proposal scores (K, h/16, w/16) bilinearly upsampled to the
    grid, the argmax and its confidence, then :func:`device_step` (relabelling and resize on the
    device, the int32 map copied to the host).
    """

    categories = ({"id": 1, "name": "segment", "supercategory": "segment"},)

    def __init__(self, segments: int, model_seconds: float, distinct: int = DISTINCT,
                 device: str = "cpu", seed: int = 0) -> None:
        self.segments = segments
        self.model_seconds = model_seconds
        self.distinct = distinct
        self.device = torch.device(device)
        self.rng = np.random.default_rng(seed)
        self.maps: dict[tuple[int, int], list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self.timer = StageTimer()
        self.calls = 0
        self._lock = threading.Lock()
        self._cycles_per_ms = (device_cycles_per_ms(self.device)
                               if self.device.type == "cuda" else 0.0)
        #: CUDA events around each simulated model call (read once, after the run)
        self.model_events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        #: thread CPU and wall seconds spent relabelling, over all threads
        self.compact_cpu = 0.0
        self.compact_wall = 0.0
        #: thread CPU and wall seconds spent building the model input (on the model's thread)
        self.preprocess_cpu = 0.0
        self.preprocess_wall = 0.0

    def prepare(self, height: int, width: int) -> None:
        """Make the distinct maps (or device scores) of one image size (outside the timed run)."""
        grid = label_grid_size(height, width, MAX_LABEL_SIDE)
        if self.device.type == "cpu":
            self.maps[(height, width)] = [
                (torch.from_numpy(voronoi_labels(*grid, self.segments, self.rng)),
                 torch.from_numpy(winner_confidence(self.rng, grid, self.segments)))
                for _ in range(self.distinct)]
            return
        low = (max(1, grid[0] // SCORE_STRIDE), max(1, grid[1] // SCORE_STRIDE))
        generator = torch.Generator().manual_seed(int(self.rng.integers(1 << 31)))
        self.maps[(height, width)] = [
            (torch.rand((1, self.segments, *low), generator=generator).to(self.device), grid)
            for _ in range(self.distinct)]

    def provenance(self) -> MethodProvenance:
        return MethodProvenance(method="zero-cost", model=f"{self.model_seconds * 1000:g} ms/image")

    def label_raw(self, images: list[np.ndarray]) -> list[RawLabels]:
        cpu, wall = time.thread_time(), time.perf_counter()
        with self.timer.stage("preprocess"):  # as the methods: resized on the model's device
            pixels = images_to_model_input(images, MODEL_INPUT_SIDE, device=self.device)
        with self._lock:
            self.preprocess_cpu += time.thread_time() - cpu
            self.preprocess_wall += time.perf_counter() - wall
        with self.timer.stage("model"):
            self._model(len(pixels))
        results = []
        for image in images:
            height, width = image.shape[:2]
            first, second = self.maps[(height, width)][self.calls % self.distinct]
            self.calls += 1
            if self.device.type == "cpu":
                results.append(device_step(first, second, height, width))
                continue
            scores = torch.nn.functional.interpolate(first, size=second, mode="bilinear",
                                                     align_corners=False)[0]
            confidence, labels = scores.max(dim=0)
            results.append(device_step(labels, confidence, height, width))
        return results

    def _model(self, images: int) -> None:
        """The simulated model: a GIL-free sleep on the CPU, a device-side busy wait on CUDA."""
        if self.device.type == "cpu":
            time.sleep(self.model_seconds * images)
            return
        if not self.model_seconds:
            return
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.cuda._sleep(int(self._cycles_per_ms * 1000 * self.model_seconds * images))
        end.record()
        self.model_events.append((start, end))

    def reset_counters(self) -> None:
        """Forget the calls so far (after the warm-up): model events and relabelling times."""
        self.model_events.clear()
        self.compact_cpu = self.compact_wall = 0.0
        self.preprocess_cpu = self.preprocess_wall = 0.0

    def model_busy_seconds(self) -> float | None:
        """Device seconds the simulated model ran (CUDA events), None on the CPU."""
        if self.device.type == "cpu":
            return None
        torch.cuda.synchronize()
        return sum(start.elapsed_time(end) for start, end in self.model_events) / 1000

    def finish(self, raw: RawLabels) -> ImageLabels:
        cpu, wall = time.thread_time(), time.perf_counter()
        labels = finish_labels(raw)
        with self._lock:
            self.compact_cpu += time.thread_time() - cpu
            self.compact_wall += time.perf_counter() - wall
        return labels


class Clock:
    """Thread CPU time and wall time spent in one callable, summed over calls and threads."""

    def __init__(self, function) -> None:
        self.function = function
        self.cpu = 0.0
        self.wall = 0.0
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, *args, **kwargs):
        cpu, wall = time.thread_time(), time.perf_counter()
        try:
            return self.function(*args, **kwargs)
        finally:
            with self._lock:
                self.cpu += time.thread_time() - cpu
                self.wall += time.perf_counter() - wall
                self.calls += 1


def clock_where_imported(function) -> Clock:
    """Replace ``function`` by a :class:`Clock` in every labeler module that imported it (the
    shard path's modules may move; the clock follows the name)."""
    clock = Clock(function)
    home = sys.modules[function.__module__]
    patched = [
        module for name, module in list(sys.modules.items())
        if name.startswith("labeler.") and module is not home
        and getattr(module, function.__name__, None) is function
    ]
    if not patched:
        raise RuntimeError(f"no labeler module on the shard path imports {function.__name__}")
    for module in patched:
        setattr(module, function.__name__, clock)
    return clock


def photo_pixels(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """(height, width, 3) uint8, photo-like: smooth colour gradients plus noise."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.random(3) * 6.28
    channels = [127 + 100 * np.sin(x / (40 + 30 * c) + y / 57 + phase[c]) for c in range(3)]
    pixels = np.stack(channels, -1) + rng.normal(0, 12, (height, width, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def encode_image(pixels: np.ndarray, image_format: str) -> bytes:
    """JPEG (quality 90) or PNG bytes of (H, W, 3) uint8 pixels."""
    buffer = io.BytesIO()
    if image_format == "jpeg":
        Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    else:
        Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def image_bytes(rng: np.random.Generator, width: int, height: int, image_format: str) -> bytes:
    """A photo-like image (:func:`photo_pixels`), encoded as JPEG (q 90) or PNG."""
    return encode_image(photo_pixels(rng, width, height), image_format)


def write_inputs(folder: Folder, count: int, width: int, height: int, image_format: str,
                 distinct_count: int = DISTINCT) -> list[str]:
    """``count`` images (``distinct_count`` different ones, repeated) under ``folder``; their
    URIs.

    Above ``FRESH_PIXELS`` only the first ``FRESH_IMAGES`` are generated (seconds each at
    12 Mpx); the others are those rolled by random offsets along both axes and encoded again:
    different bytes and pixels of the same statistics, which is all a decoder sees.
    """
    rng = np.random.default_rng(1)
    count_distinct = min(count, distinct_count)
    if width * height <= FRESH_PIXELS:
        distinct = [image_bytes(rng, width, height, image_format) for _ in range(count_distinct)]
    else:
        bases = [photo_pixels(rng, width, height) for _ in range(min(count_distinct, FRESH_IMAGES))]
        offsets = np.random.default_rng(2)
        distinct = [encode_image(base, image_format) for base in bases] + [
            encode_image(np.roll(bases[index % len(bases)],
                                 (int(offsets.integers(height)), int(offsets.integers(width))),
                                 axis=(0, 1)), image_format)
            for index in range(len(bases), count_distinct)]
    suffix = "jpg" if image_format == "jpeg" else "png"
    uris = []
    for index in range(count):
        relative = f"images/{index:06d}.{suffix}"
        folder.write_bytes(relative, distinct[index % len(distinct)])
        uris.append(folder.uri_of(relative))
    return uris


def run_ceiling(args: argparse.Namespace, work: Path, input_folder: Folder,
                storage_options: dict | None) -> dict:
    width, height = args.size
    uris = write_inputs(input_folder, args.images, width, height, args.format, args.distinct)
    segmenter = ZeroCostSegmenter(args.segments, args.model_ms_per_image / 1000,
                                  min(args.distinct, args.images), args.device)
    side = args.decode_side or None  # as draft_decode does for a method of this input side
    decoded = decode_image(read_image_bytes(uris[0], storage_options=storage_options),
                           needed_side=side)
    segmenter.prepare(decoded.height, decoded.width)
    processor = ShardProcessor(segmenter, args.batch_size, None, "bench", storage_options,
                               postprocess_threads=args.postprocess_threads, decode_side=side)
    warmup_s, warmup_cpu_s = warm_up(processor, work / "warmup", uris[:WARMUP_IMAGES])
    segmenter.reset_counters()
    load_before = os.getloadavg()
    run = RunFolder(Folder(str(work / "out")))
    plan = plan_run(run, ({"uri": uri} for uri in uris), args.shard_size)
    encode = clock_where_imported(rle.encode_label_map)
    decode = clock_where_imported(decode_image)
    commit = clock_where_imported(commit_shard)
    postprocess = processor._finish_image = Clock(processor._finish_image)
    stats = []
    started, process_cpu = time.perf_counter(), time.process_time()
    # As a worker's actor: SHARDS_IN_FLIGHT_PER_WORKER calls at once, markers in completion order.
    with ThreadPoolExecutor(SHARDS_IN_FLIGHT_PER_WORKER) as calls:
        running = [calls.submit(processor.process, run.output, shard["shard_id"])
                   for shard in plan["shards"]]
        for call in running:
            stats.append(call.result())
            run.mark_done(stats[-1]["shard_id"])
    wall = time.perf_counter() - started
    process_cpu = time.process_time() - process_cpu
    device_model = segmenter.model_busy_seconds()
    processor.close()
    labeled = sum(s["labeled"] for s in stats)
    if labeled != args.images:
        raise RuntimeError(f"only {labeled} of {args.images} images labeled: {stats[0]}")
    total = {name: sum(s["timings"][name] for s in stats) for name in stats[0]["timings"]}
    model = sum(s["method_timings"].get("model", 0.0) for s in stats)
    if device_model is not None:  # the device's busy time, not the host's launch time
        model = device_model
    pipeline = {name: sum(s["pipeline"][name] for s in stats)
                for name in ("wait_model", "wait_postprocess")}
    wall_ms = {
        "read": total["read"], "decode": total["decode"],
        "preprocess": segmenter.preprocess_wall, "model": model,
        "compact": segmenter.compact_wall, "encode": encode.wall,
        "rows": postprocess.wall - encode.wall - segmenter.compact_wall,
        "commit": total["commit"], "wait_input": total["wait_input"], **pipeline,
    }
    # The model's thread: everything neither decoding, post-processing nor committing (reads,
    # batching, bookkeeping), an upper bound for that lane. Commits run on the shard's own
    # thread off the model; they share the decoding lane's core here.
    model_thread_cpu = (process_cpu - decode.cpu - postprocess.cpu - commit.cpu
                        - segmenter.preprocess_cpu)
    cpu_ms = {"decode": decode.cpu, "preprocess": segmenter.preprocess_cpu,
              "compact": segmenter.compact_cpu, "encode": encode.cpu,
              "postprocess": postprocess.cpu, "commit": commit.cpu, "model_thread": model_thread_cpu,
              "process_total": process_cpu}
    # On the CPU the relabelling is host work an accelerator would do in its device step.
    host_cpu = process_cpu - (segmenter.compact_cpu if segmenter.device.type == "cpu" else 0.0)
    per_image = lambda seconds: {
        name: round(1000 * value / labeled, 3) for name, value in seconds.items()
    }
    return {
        "benchmark": "runtime_ceiling", "images": labeled, "distinct": segmenter.distinct,
        "device": str(segmenter.device), "size": f"{width}x{height}",
        "decode_scale": decoded.scale,
        "label_grid": "x".join(map(str, label_grid_size(decoded.height, decoded.width,
                                                        MAX_LABEL_SIDE)[::-1])),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "segments": args.segments, "format": args.format, "storage": "s3" if args.s3 else "local",
        "batch_size": args.batch_size, "shard_size": args.shard_size,
        "model_ms_per_image": args.model_ms_per_image,
        "postprocess_threads": args.postprocess_threads, "wall_s": round(wall, 3),
        "images_per_second": round(labeled / wall, 2),
        "wall_ms_per_image": per_image(wall_ms),
        "cpu_ms_per_image": per_image(cpu_ms),
        "model_idle_fraction": round(1 - model / wall, 4),
        # From CPU time, as on a machine without neighbours: everything on one core.
        "cpu_bound_images_per_second": round(labeled / process_cpu, 2),
        # What stays on the host when an accelerator relabels (see the module's docstring).
        "host_ms_per_image_with_accelerator": round(1000 * host_cpu / labeled, 3),
        "host_images_per_second_with_accelerator": round(labeled / host_cpu, 2),
        "warmup_s": round(warmup_s, 3), "warmup_cpu_s": round(warmup_cpu_s, 3),
        "annotations_per_image": round(sum(s["annotations"] for s in stats) / labeled, 2),
    }


def warm_up(processor: ShardProcessor, work: Path, uris: list[str]) -> tuple[float, float]:
    """One untimed shard of ``uris`` through ``processor`` (its own run folder); its wall and
    process CPU seconds: what a worker pays once (first-use imports, thread start-up)."""
    run = RunFolder(Folder(str(work)))
    plan = plan_run(run, ({"uri": uri} for uri in uris), len(uris))
    started, cpu = time.perf_counter(), time.process_time()
    for shard in plan["shards"]:
        processor.process(run.output, shard["shard_id"])
    return time.perf_counter() - started, time.process_time() - cpu


def host_step(labels: np.ndarray, confidence: np.ndarray, height: int, width: int) -> float:
    """One image's host work after the model (relabel, resize, encode); its thread CPU seconds."""
    cpu = time.thread_time()
    result = finish_labels(PendingLabels(labels, confidence, height, width))
    rle.encode_label_map(result.grid, len(result.category_ids), result.rows, result.cols)
    return time.thread_time() - cpu


def run_pool_scaling(args: argparse.Namespace) -> dict:
    """The host step over ``--images`` maps on 1..``--pool-scaling`` threads, then processes.

    A process pool is handed each map as a thread pool is (pickled to the worker, so its
    transfer is paid). ``concurrency`` is the workers' CPU seconds over the wall seconds: the
    number of cores the pool really kept busy (1.0 for a pool the GIL serialises).
    """
    width, height = args.size
    grid = label_grid_size(height, width, MAX_LABEL_SIDE)
    rng = np.random.default_rng(0)
    maps = [(voronoi_labels(*grid, args.segments, rng),
             winner_confidence(rng, grid, args.segments))
            for _ in range(min(args.distinct, args.images))]
    work = [(*maps[index % len(maps)], height, width) for index in range(args.images)]
    rows = []
    for kind in ("threads", "processes"):
        for workers in range(1, args.pool_scaling + 1):
            executor = (ThreadPoolExecutor(workers) if kind == "threads" else ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("fork")))
            with executor:
                list(executor.map(host_step, *zip(*work[:workers])))  # start the workers
                started = time.perf_counter()
                cpu = sum(executor.map(host_step, *zip(*work)))
                wall = time.perf_counter() - started
            rows.append({"pool": kind, "workers": workers, "images": args.images,
                         "images_per_second": round(args.images / wall, 2),
                         "cpu_ms_per_image": round(1000 * cpu / args.images, 3),
                         "concurrency": round(cpu / wall, 2),
                         "load_average": [round(v, 2) for v in os.getloadavg()]})
            sys.stdout.write(json.dumps(rows[-1]) + "\n")
            sys.stdout.flush()
    return {"benchmark": "pool_scaling", "size": f"{width}x{height}", "segments": args.segments,
            "cpus": os.cpu_count(), "rows": rows}


def per_label_pycocotools(label_map: np.ndarray, n_labels: int) -> list[tuple]:
    """The encoding the one-pass encoder replaced: one comparison and one encode per label."""
    out = []
    for label in range(n_labels):
        encoded = mask_utils.encode(np.asfortranarray(label_map == label, dtype=np.uint8))
        out.append((encoded["counts"].decode("ascii"), int(mask_utils.area(encoded)),
                    [float(v) for v in mask_utils.toBbox(encoded)]))
    return out


def best(call, repeat: int) -> float:
    """The least thread CPU time of ``repeat`` single calls, in seconds (robust to neighbours)."""
    return min(timeit.repeat(call, timer=time.thread_time, number=1, repeat=repeat))


def sorting_compact(label_map: np.ndarray, confidence: np.ndarray) -> tuple:
    """The relabelling the lookup tables replaced: np.unique with inverse over the whole map."""
    valid = label_map >= 0
    present, inverse = np.unique(label_map[valid], return_inverse=True)
    compact = np.full(label_map.shape, -1, dtype=np.int32)
    compact[valid] = inverse
    sums = np.bincount(inverse, weights=confidence[valid].astype(np.float64), minlength=len(present))
    return compact, sums / np.maximum(np.bincount(inverse, minlength=len(present)), 1)


def run_encoder(args: argparse.Namespace) -> dict:
    width, height = args.size
    rng = np.random.default_rng(0)
    figures: dict = {"benchmark": "encoder", "size": f"{width}x{height}"}
    for segments in (30, 200):
        label_map = voronoi_labels(height, width, segments, rng)
        new = [(m.counts, m.area, m.bbox) for m in rle.encode_label_map(label_map, segments)]
        if new != per_label_pycocotools(label_map, segments):
            raise RuntimeError("one-pass encoding differs from pycocotools")
        figures[f"one_pass_ms_{segments}"] = round(
            1000 * best(lambda m=label_map, s=segments: rle.encode_label_map(m, s), 30), 3)
        figures[f"per_label_ms_{segments}"] = round(
            1000 * best(lambda m=label_map, s=segments: per_label_pycocotools(m, s), 3), 3)
        confidence = winner_confidence(rng, (height, width), segments)
        figures[f"compact_ms_{segments}"] = round(1000 * best(
            lambda m=label_map, c=confidence: compact_resized_labels(m, c, height, width), 30), 3)
        tensors = torch.from_numpy(label_map), torch.from_numpy(confidence)
        figures[f"compact_torch_cpu_ms_{segments}"] = round(1000 * best(
            lambda t=tensors: _compact_on_device(*t, height, width, None), 10), 3)
        figures[f"sorting_compact_ms_{segments}"] = round(
            1000 * best(lambda m=label_map, c=confidence: sorting_compact(m, c), 3), 3)
        grid = label_grid_size(height, width, MAX_LABEL_SIDE)
        if grid != (height, width):  # labels at the grid, encoded from it or expanded first
            labels = ImageLabels(voronoi_labels(*grid, segments, rng), np.ones(segments),
                                 np.ones(segments)).resized(height, width)
            from_grid = (labels.grid, segments, labels.rows, labels.cols)
            if ([(m.counts, m.area, m.bbox) for m in rle.encode_label_map(*from_grid)]
                    != [(m.counts, m.area, m.bbox)
                        for m in rle.encode_label_map(labels.label_map, segments)]):
                raise RuntimeError("encoding from the grid differs from the expanded map's")
            figures[f"grid_encode_ms_{segments}"] = round(
                1000 * best(lambda a=from_grid: rle.encode_label_map(*a), 10), 3)
            figures[f"expand_then_encode_ms_{segments}"] = round(1000 * best(
                lambda a=from_grid: rle.encode_label_map(
                    a[0][a[2][:, None], a[3][None, :]], a[1]), 3), 3)
    figures["one_pass_200_over_30"] = round(figures["one_pass_ms_200"] / figures["one_pass_ms_30"], 2)
    return figures


def parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size must be WIDTHxHEIGHT, got {text!r}") from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"--size must be positive, got {text!r}")
    return width, height


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--size", type=parse_size, default=(1024, 768), help="WIDTHxHEIGHT")
    parser.add_argument("--segments", type=int, default=30)
    parser.add_argument("--decode-side", type=int, default=512,
                        help="images decoded down to this side, as draft_decode does for a "
                             "method of this input side (0: full size)")
    parser.add_argument("--format", choices=["jpeg", "png"], default="jpeg")
    parser.add_argument("--s3", action="store_true", help="inputs on a local rclone S3 server")
    parser.add_argument("--model-ms-per-image", type=float, default=0.0)
    parser.add_argument("--postprocess-threads", type=int, default=1,
                        help="the worker's post-processing pool (--cpus-per-worker)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--distinct", type=int, default=DISTINCT,
                        help="distinct images and label maps (repeated up to --images)")
    parser.add_argument("--device", default="cpu",
                        help="where the zero-cost model makes its label maps (cpu, cuda)")
    parser.add_argument("--encoder", action="store_true", help="the mask encoder alone")
    parser.add_argument("--pool-scaling", type=int, metavar="N",
                        help="the host step alone on 1..N threads, then 1..N processes")
    parser.add_argument("--json", action="store_true", help="end with one JSON line of figures")
    args = parser.parse_args()
    if min(args.images, args.segments, args.batch_size, args.shard_size,
           args.postprocess_threads, args.distinct, args.pool_scaling or 1) < 1:
        parser.error("--images, --segments, --batch-size, --shard-size, --postprocess-threads, "
                     "--distinct and --pool-scaling must be >= 1")
    torch.set_num_threads(1)  # what a one-CPU worker gets
    if args.encoder:
        figures = run_encoder(args)
    elif args.pool_scaling:
        figures = run_pool_scaling(args)
    else:
        with tempfile.TemporaryDirectory(prefix="labeler-ceiling-") as work:
            work = Path(work)
            if args.s3:
                with S3Server(work / "s3") as server:
                    server.create_bucket("bench")
                    inputs = Folder("s3://bench/inputs", server.storage_options)
                    figures = run_ceiling(args, work, inputs, server.storage_options)
            else:
                figures = run_ceiling(args, work, Folder(str(work / "inputs")), None)
    figures["load_average"] = [round(v, 2) for v in os.getloadavg()]
    load = f"load {figures.get('load_average_before', '-')} -> {figures['load_average']}"
    for name, value in figures.items():
        sys.stdout.write(f"{name}: {value}    ({load})\n")
    if args.json:
        sys.stdout.write(json.dumps(figures) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
