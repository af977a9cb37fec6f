"""SLiMe benchmark: fit time per step, inference time per image, peak memory, fused vs explicit WAS.

Models:

* ``tiny``: the offline seeded test model (SD 1.x geometry, tiny widths);
* ``sd21``: randomly initialised weights with the exact shapes of Stable Diffusion 2.1-base
  (UNet 865M, OpenCLIP-H text encoder 340M, SD VAE), built here from configs with the real
  diffusers/transformers classes. Timings and memory match the real checkpoint's; labels do not.

Each (model, WAS implementation) runs in its own subprocess so the peak memory is its own: CUDA
``max_memory_allocated`` on GPU (absolute, weights included); on CPU a 5 ms RSS sampler, reported
above the RSS at the start of the block (after ``malloc_trim``, so memory freed by earlier blocks
does not count).

Usage::

    python bench/slime_bench.py --models tiny,sd21 --fit-steps 2 --images 1 --device cpu
    python bench/slime_bench.py --models sd21 --device cuda --dtype float16 --fit-steps 10 --images 8
    python bench/slime_bench.py --models sd21 --was fused --device cuda --dtype bfloat16 \
        --patch-batches 1,2,4,8,16,32 --compile

``--patch-batches`` sweeps inference over patches per UNet call (``patch_batch``; each image is
4 patches, so ``--images`` is raised to a quarter of the largest batch): ``infer_sweep`` in the
row. ``--compile`` wraps the UNet in ``torch.compile`` (the warm-up step and image compile it);
the warm-up's own time is kept apart (``fit_first_step_s``, ``first_image_s``) from the steady
state, and ``--fit-steps 0`` times inference only (no backward graph to compile). Each row is
printed as one JSON line as soon as its subprocess ends (and ``--json`` rewritten), so a run cut
short keeps the rows so far.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Self

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SD21_UNET = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": [320, 640, 1280, 1280],
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "cross_attention_dim": 1024, "attention_head_dim": [5, 10, 20, 20],
    "use_linear_projection": True, "norm_num_groups": 32, "flip_sin_to_cos": True, "freq_shift": 0,
}
SD_VAE = {
    "in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4, "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2, "latent_channels": 4, "norm_num_groups": 32, "sample_size": 512,
    "scaling_factor": 0.18215,
}
SD21_TEXT = {
    "hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
    "num_hidden_layers": 23, "max_position_embeddings": 77, "hidden_act": "gelu",
    "projection_dim": 512, "vocab_size": 49408,
}


class PeakMemory:
    """Peak memory of a block: CUDA allocator peak, or sampled process RSS on CPU (bytes)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0

    def __enter__(self) -> Self:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            _trim()
            self.base = _rss()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.005)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _rss())

    @property
    def above_base(self) -> float:
        return max(0, self.peak - self.base) / 2**30


def _trim() -> None:
    """Hand freed heap memory back to the OS so RSS measures what a block really holds."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def _rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def build_backbone(name: str, device: str, dtype: str | None):
    from labeler.models.backbone import Backbone, _resolve_dtype, load_backbone

    if name == "tiny":
        return load_backbone("tiny", device=device, dtype=dtype)
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from labeler.models.tiny.model import SCHEDULER_CONFIG, tokenizer_vocabulary

    torch.manual_seed(0)
    vocab, merges = tokenizer_vocabulary()  # byte-level stand-in: ids fit SD's 49408 vocabulary
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    text = CLIPTextModel(CLIPTextConfig(bos_token_id=vocab["<|startoftext|>"],
                                        eos_token_id=vocab["<|endoftext|>"],
                                        pad_token_id=vocab["<|endoftext|>"], **SD21_TEXT))
    torch_device = torch.device(device)
    torch_dtype = _resolve_dtype(dtype, torch_device)
    parts = {"unet": UNet2DConditionModel(**SD21_UNET), "vae": AutoencoderKL(**SD_VAE), "text_encoder": text}
    for module in parts.values():
        module.requires_grad_(False).eval()
    parts["unet"].to(torch_device, torch_dtype)
    parts["vae"].to(torch_device, torch_dtype)
    text.to(torch_device)
    return Backbone(name="sd21-shape", device=torch_device, dtype=torch_dtype, tokenizer=tokenizer,
                    scheduler=DDIMScheduler(**SCHEDULER_CONFIG), **parts)


def synthetic(size: int, seed: int):
    from labeler.methods.annotations import AnnotatedImage

    rng = np.random.default_rng(seed)
    mask = np.zeros((size, size), np.int64)
    x0, y0 = (rng.uniform(0.3, 0.7, 2) * size).astype(int)
    mask[:y0, x0:], mask[y0:, x0:] = 1, 2
    image = np.array([[90, 160, 90], [220, 40, 40], [40, 60, 210]], np.uint8)[mask]
    return AnnotatedImage(f"s{seed}", image, mask, "0" * 16)


def worker(args: argparse.Namespace) -> dict:
    """One model and WAS implementation: fit steps, inference, WAS alone."""
    from labeler.methods.slime.algorithm import DEFAULT_LAYERS
    from labeler.methods.slime.embedding_set import EmbeddingSet, default_prompt
    from labeler.methods.slime.segmenter import Slime
    from labeler.methods.slime.settings import SlimeOptions

    torch.set_num_threads(args.threads or torch.get_num_threads())
    backbone = build_backbone(args.model, args.device, args.dtype)
    if args.compile:
        backbone.unet = torch.compile(backbone.unet)
    classes = tuple(["background"] + [f"part{i}" for i in range(1, args.classes)])
    size = args.input_size or backbone.image_size
    result = {"model": args.model, "was": args.was, "device": str(backbone.device),
              "dtype": str(backbone.dtype).removeprefix("torch."), "size": size,
              "compile": args.compile}

    if args.fit_steps:
        result.update(fit_figures(backbone, classes, args))

    embedding_set = EmbeddingSet(torch.randn(args.classes - 1, backbone.text_encoder.config.hidden_size),
                                 classes, args.model, backbone.fingerprint, default_prompt(args.classes),
                                 {k: list(v) for k, v in DEFAULT_LAYERS.items()})
    segmenter = Slime(backbone, embedding_set,
                      SlimeOptions(was_impl=args.was, input_size=args.input_size))
    images = [synthetic(size, seed).image for seed in range(1, args.images + 1)]
    started = _now(backbone.device)
    segmenter.predict(images[:1])  # warm-up (with --compile: the compilation)
    result["first_image_s"] = _now(backbone.device) - started
    with PeakMemory(backbone.device) as memory:
        started = _now(backbone.device)
        segmenter.predict(images)
        result["infer_s_per_image"] = (_now(backbone.device) - started) / len(images)
    result["infer_peak_gib"] = memory.above_base
    if args.patch_batches:
        result["infer_sweep"] = infer_sweep(backbone, embedding_set, args)
    result.update(was_alone(backbone, args))
    return result


def fit_figures(backbone, classes: tuple[str, ...], args: argparse.Namespace) -> dict:
    """Seconds per fit step after a warm-up step (with --compile: the compilation), peak memory."""
    from labeler.methods.slime.data import prepare
    from labeler.methods.slime.fit import FitSettings, SlimeFitter

    size = args.input_size or backbone.image_size
    fitter = SlimeFitter(backbone, classes,
                         FitSettings(seed=0, was_impl=args.was, fit_size=args.input_size))
    image, mask = prepare(synthetic(size, 0), size)
    mask = mask.clamp(max=args.classes - 1)
    times = []
    with PeakMemory(backbone.device) as memory:
        for step in range(args.fit_steps + 1):  # the first step warms up
            pixels, loss_mask = fitter.sample(image, mask, target=step % args.classes)
            started = _now(backbone.device)
            fitter.step(pixels, loss_mask)
            times.append(_now(backbone.device) - started)
    return {"fit_first_step_s": times[0], "fit_s_per_step": float(np.mean(times[1:])),
            "fit_peak_gib": memory.above_base}


def infer_sweep(backbone, embedding_set, args: argparse.Namespace) -> list[dict]:
    """Inference seconds per image for each ``patch_batch`` of ``--patch-batches``."""
    from labeler.methods.slime.segmenter import Slime
    from labeler.methods.slime.settings import SlimeOptions

    sizes = [int(part) for part in args.patch_batches.split(",")]
    count = max(args.images, -(-max(sizes) // 4))
    size = args.input_size or backbone.image_size
    images = [synthetic(size, seed).image for seed in range(1, count + 1)]
    rows = []
    for patch_batch in sizes:
        segmenter = Slime(backbone, embedding_set,
                          SlimeOptions(was_impl=args.was, patch_batch=patch_batch,
                                       input_size=args.input_size))
        started = _now(backbone.device)
        segmenter.predict(images[:1])  # warm-up (and compilation of a new shape)
        first = _now(backbone.device) - started
        with PeakMemory(backbone.device) as memory:
            started = _now(backbone.device)
            segmenter.predict(images)
            seconds = (_now(backbone.device) - started) / len(images)
        rows.append({"patch_batch": patch_batch, "images": len(images), "first_image_s": first,
                     "infer_s_per_image": seconds, "infer_peak_gib": memory.above_base})
    return rows


def was_alone(backbone, args: argparse.Namespace) -> dict:
    """The WAS-attention of one SD-2.1 layer at the latent side (5 heads x 64) for 4 patches."""
    from labeler.methods.slime.capture import explicit_was, fused_was

    generator = torch.Generator().manual_seed(0)
    shape = (4, 5, ((args.input_size or backbone.image_size) // 8) ** 2, 64)
    query = torch.randn(shape, generator=generator).to(backbone.device, backbone.dtype)
    key = torch.randn(shape, generator=generator).to(backbone.device, backbone.dtype)
    values = torch.rand(4, shape[2], args.classes, generator=generator).to(backbone.device)
    function = fused_was if args.was == "fused" else explicit_was
    function(query, key, values, 0.125)
    with PeakMemory(backbone.device) as memory, torch.no_grad():
        started = _now(backbone.device)
        for _ in range(3):
            function(query, key, values, 0.125)
        seconds = (_now(backbone.device) - started) / 3
    return {"was_layer_ms": seconds * 1000, "was_layer_peak_gib": memory.above_base}


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,sd21", help="comma-separated: tiny, sd21")
    parser.add_argument("--was", default="fused,explicit", help="comma-separated: fused, explicit")
    parser.add_argument("--fit-steps", type=int, default=2, dest="fit_steps", help="timed steps (+1 warm-up); 0: inference only")
    parser.add_argument("--images", type=int, default=1, help="timed images (+1 warm-up)")
    parser.add_argument("--classes", type=int, default=3, help="K, background included")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="float32, float16, bfloat16 (default: auto)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads")
    parser.add_argument("--input-size", type=int, default=None, dest="input_size",
                        help="model input side (multiple of 64; default: the model's)")
    parser.add_argument("--patch-batches", help="comma-separated patch_batch sweep, e.g. 1,4,16")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.model, args.was = args.worker.split(":")
        sys.stdout.write("RESULT " + json.dumps(worker(args)) + "\n")
        return
    rows = []
    for model in args.models.split(","):
        for was in args.was.split(","):
            command = [sys.executable, __file__, "--worker", f"{model}:{was}", "--fit-steps",
                       str(args.fit_steps), "--images", str(args.images), "--classes", str(args.classes),
                       "--device", args.device] + (["--dtype", args.dtype] if args.dtype else []) + (
                ["--threads", str(args.threads)] if args.threads else []) + (
                ["--input-size", str(args.input_size)] if args.input_size else []) + (
                ["--patch-batches", args.patch_batches] if args.patch_batches else []) + (
                ["--compile"] if args.compile else [])
            done = subprocess.run(command, check=False, capture_output=True, text=True)
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if done.returncode or not lines:
                sys.stderr.write(done.stderr[-3000:])
                raise SystemExit(f"{model}:{was} failed")
            rows.append({**json.loads(lines[-1][7:]), "load_average": os.getloadavg()})
            _print_row(rows[-1], header=len(rows) == 1)
            sys.stdout.write(json.dumps(rows[-1]) + "\n")  # each row as it comes
            sys.stdout.flush()
            if args.json:
                Path(args.json).write_text(json.dumps(rows, indent=2))


def _print_row(row: dict, header: bool) -> None:
    columns = ("model", "was", "device", "dtype", "size", "fit_s_per_step", "fit_peak_gib",
               "first_image_s", "infer_s_per_image", "infer_peak_gib", "was_layer_ms",
               "was_layer_peak_gib")
    if header:
        sys.stdout.write(" | ".join(columns) + "\n" + " | ".join("---" for _ in columns) + "\n")
    cells = [f"{row.get(c):.3f}" if isinstance(row.get(c), float) else str(row.get(c, "-"))
             for c in columns]
    sys.stdout.write(" | ".join(cells) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
