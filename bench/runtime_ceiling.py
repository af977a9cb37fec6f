"""A worker's ceiling: the real shard path with a segmenter that costs nothing (or a set time).

``ShardProcessor`` (read, decode on its prefetch thread, the model, then relabel, encode and rows
on its post-processing pool, commit) runs over generated JPEG or PNG files, two shards at a time
as a worker's actor runs them, with a zero-cost two-step segmenter: its device step sleeps
``--model-ms-per-image`` per image to stand in for the model and hands over Voronoi label maps of
``--segments`` regions at each image's size; its host step relabels them with the same
:func:`~labeler.methods.device_labels.finish_labels` the methods use on CPU. Figures:

* ``images_per_second`` over the whole run;
* seconds per image by stage (decode, model, compact, encode, rows, commit; decode runs on the
  prefetch threads, the model on the model's thread, compact/encode/rows on the pool);
* ``model_idle_fraction``: the share of wall time the simulated model is not running, i.e. waits
  for the rest (what a real model would spend idle);
* from thread CPU time, robust to a shared machine's neighbours: ``cpu_ms_per_image`` by stage,
  ``cpu_bound_images_per_second`` (the process's CPU time on one core) and
  ``model_idle_fraction_cpu``: the model's time against the slowest of the three overlapping
  lanes as they would run with a core each (the model's thread: model plus the CPU time spent
  neither decoding, post-processing nor committing; decoding plus commits, on the prefetch and
  the shards' threads; the pool: post-processing CPU time divided by its threads);
  ``cpus_assumed`` is those cores, 2 + the pool's threads; ``pipelined_images_per_second_cpu``
  is the images/s of that slowest lane.

``--encoder`` measures the mask encoder alone at ``--size`` with 30 and 200 segments, one-pass
against the per-label pycocotools encoding it replaced (checked identical on the way).

    python bench/runtime_ceiling.py --images 128 --size 1024x768 --segments 30
    python bench/runtime_ceiling.py --images 128 --size 1024x768 --segments 30 --model-ms-per-image 10
    python bench/runtime_ceiling.py --images 128 --model-ms-per-image 10 --postprocess-threads 2
    python bench/runtime_ceiling.py --images 64 --size 1024x768 --segments 30 --s3 --json
    python bench/runtime_ceiling.py --encoder --size 1024x768

With ``--json`` the last line printed is one JSON object of all figures.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import threading
import time
import timeit
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from labeler.io.decode import decode_image
from labeler.io.folders import Folder
from labeler.methods.base import ImageLabels, MethodProvenance, compact_resized_labels
from labeler.methods.device_labels import RawLabels, _compact_on_device, device_step, finish_labels
from labeler.output import rle
from labeler.runtime.executor import SHARDS_IN_FLIGHT_PER_WORKER
from labeler.runtime.plan import plan_run
from labeler.runtime.run_folder import RunFolder
from labeler.runtime.shard import ShardProcessor
from labeler.timing import StageTimer
from tests.s3server import S3Server

#: Label maps kept per image size (generating one costs far more than the runtime under test).
MAPS_PER_SIZE = 4


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


class ZeroCostSegmenter:
    """A two-step :class:`labeler.methods.base.Segmenter` whose model costs ``model_seconds`` per
    image.

    The device step (``label_raw``, timed as ``model``) is a sleep, then per image one of a few
    cached Voronoi maps of the image's size; the host step (``finish``, timed as ``compact``,
    on the pool's threads) relabels it as the methods do on CPU.
    """

    categories = ({"id": 1, "name": "segment", "supercategory": "segment"},)

    def __init__(self, segments: int, model_seconds: float, seed: int = 0) -> None:
        self.segments = segments
        self.model_seconds = model_seconds
        self.rng = np.random.default_rng(seed)
        self.maps: dict[tuple[int, int], list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self.timer = StageTimer()
        self.calls = 0
        self._lock = threading.Lock()
        #: thread CPU and wall seconds spent relabelling, over all threads
        self.compact_cpu = 0.0
        self.compact_wall = 0.0

    def prepare(self, height: int, width: int) -> None:
        """Make the cached maps of one size (outside the timed run)."""
        self.maps[(height, width)] = [
            (
                torch.from_numpy(voronoi_labels(height, width, self.segments, self.rng)),
                torch.from_numpy(self.rng.random((height, width), dtype=np.float32)),
            )
            for _ in range(MAPS_PER_SIZE)
        ]

    def provenance(self) -> MethodProvenance:
        return MethodProvenance(method="zero-cost", model=f"sleep {self.model_seconds * 1000:g} ms/image")

    def label_raw(self, images: list[np.ndarray]) -> list[RawLabels]:
        with self.timer.stage("model"):
            time.sleep(self.model_seconds * len(images))
        results = []
        for image in images:
            height, width = image.shape[:2]
            labels, confidence = self.maps[(height, width)][self.calls % MAPS_PER_SIZE]
            self.calls += 1
            results.append(device_step(labels, confidence, height, width))
        return results

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


def image_bytes(rng: np.random.Generator, width: int, height: int, image_format: str) -> bytes:
    """A photo-like image: smooth colour gradients plus noise, encoded as JPEG (q 90) or PNG."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.random(3) * 6.28
    channels = [127 + 100 * np.sin(x / (40 + 30 * c) + y / 57 + phase[c]) for c in range(3)]
    pixels = np.stack(channels, -1) + rng.normal(0, 12, (height, width, 3))
    buffer = io.BytesIO()
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    if image_format == "jpeg":
        image.save(buffer, "JPEG", quality=90)
    else:
        image.save(buffer, "PNG")
    return buffer.getvalue()


def write_inputs(folder: Folder, count: int, width: int, height: int, image_format: str) -> list[str]:
    """``count`` images (a few distinct ones, repeated) under ``folder``; their URIs."""
    rng = np.random.default_rng(1)
    distinct = [image_bytes(rng, width, height, image_format) for _ in range(min(count, 8))]
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
    uris = write_inputs(input_folder, args.images, width, height, args.format)
    segmenter = ZeroCostSegmenter(args.segments, args.model_ms_per_image / 1000)
    segmenter.prepare(height, width)
    run = RunFolder(Folder(str(work / "out")))
    plan = plan_run(run, ({"uri": uri} for uri in uris), args.shard_size)
    processor = ShardProcessor(segmenter, args.batch_size, None, "bench", storage_options,
                               postprocess_threads=args.postprocess_threads)
    encode = clock_where_imported(rle.encode_label_map)
    decode = clock_where_imported(decode_image)
    commit = processor._commit = Clock(processor._commit)
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
    processor.close()
    labeled = sum(s["labeled"] for s in stats)
    if labeled != args.images:
        raise RuntimeError(f"only {labeled} of {args.images} images labeled: {stats[0]}")
    total = {name: sum(s["timings"][name] for s in stats) for name in stats[0]["timings"]}
    model = sum(s["method_timings"].get("model", 0.0) for s in stats)
    pipeline = {name: sum(s["pipeline"][name] for s in stats)
                for name in ("wait_model", "wait_postprocess")}
    wall_ms = {
        "read": total["read"], "decode": total["decode"], "model": model,
        "compact": segmenter.compact_wall, "encode": encode.wall,
        "rows": postprocess.wall - encode.wall - segmenter.compact_wall,
        "commit": total["commit"], "wait_input": total["wait_input"], **pipeline,
    }
    # The model's thread: everything neither decoding, post-processing nor committing (reads,
    # batching, bookkeeping), an upper bound for that lane. Commits run on the shard's own
    # thread off the model; they share the decoding lane's core here.
    model_thread_cpu = process_cpu - decode.cpu - postprocess.cpu - commit.cpu
    cpu_ms = {"decode": decode.cpu, "compact": segmenter.compact_cpu, "encode": encode.cpu,
              "postprocess": postprocess.cpu, "commit": commit.cpu, "model_thread": model_thread_cpu,
              "process_total": process_cpu}
    slowest_lane = max(model + model_thread_cpu, decode.cpu + commit.cpu,
                       postprocess.cpu / args.postprocess_threads)
    per_image = lambda seconds: {
        name: round(1000 * value / labeled, 3) for name, value in seconds.items()
    }
    return {
        "benchmark": "runtime_ceiling", "images": labeled, "size": f"{width}x{height}",
        "segments": args.segments, "format": args.format, "storage": "s3" if args.s3 else "local",
        "batch_size": args.batch_size, "shard_size": args.shard_size,
        "model_ms_per_image": args.model_ms_per_image,
        "postprocess_threads": args.postprocess_threads, "wall_s": round(wall, 3),
        "images_per_second": round(labeled / wall, 2),
        "wall_ms_per_image": per_image(wall_ms),
        "cpu_ms_per_image": per_image(cpu_ms),
        "model_idle_fraction": round(1 - model / wall, 4),
        # The same from CPU time, as on a machine without neighbours: one core for everything,
        # and the model against the slowest lane, each lane on its own cores.
        "cpu_bound_images_per_second": round(labeled / process_cpu, 2),
        "model_idle_fraction_cpu": round(1 - model / slowest_lane, 4) if model else None,
        "pipelined_images_per_second_cpu": round(labeled / slowest_lane, 2),
        "cpus_assumed": 2 + args.postprocess_threads,
        "annotations_per_image": round(sum(s["annotations"] for s in stats) / labeled, 2),
    }


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
        confidence = rng.random((height, width), dtype=np.float32)
        figures[f"compact_ms_{segments}"] = round(1000 * best(
            lambda m=label_map, c=confidence: compact_resized_labels(m, c, height, width), 30), 3)
        tensors = torch.from_numpy(label_map), torch.from_numpy(confidence)
        figures[f"compact_torch_cpu_ms_{segments}"] = round(1000 * best(
            lambda t=tensors: _compact_on_device(*t, height, width, None), 10), 3)
        figures[f"sorting_compact_ms_{segments}"] = round(
            1000 * best(lambda m=label_map, c=confidence: sorting_compact(m, c), 3), 3)
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
    parser.add_argument("--format", choices=["jpeg", "png"], default="jpeg")
    parser.add_argument("--s3", action="store_true", help="inputs on a local rclone S3 server")
    parser.add_argument("--model-ms-per-image", type=float, default=0.0)
    parser.add_argument("--postprocess-threads", type=int, default=1,
                        help="the worker's post-processing pool (--cpus-per-worker)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--encoder", action="store_true", help="the mask encoder alone")
    parser.add_argument("--json", action="store_true", help="end with one JSON line of figures")
    args = parser.parse_args()
    if min(args.images, args.segments, args.batch_size, args.shard_size,
           args.postprocess_threads) < 1:
        parser.error("--images, --segments, --batch-size, --shard-size and --postprocess-threads "
                     "must be >= 1")
    torch.set_num_threads(1)  # what a one-CPU worker gets
    if args.encoder:
        figures = run_encoder(args)
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
    for name, value in figures.items():
        sys.stdout.write(f"{name}: {value}\n")
    if args.json:
        sys.stdout.write(json.dumps(figures) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
