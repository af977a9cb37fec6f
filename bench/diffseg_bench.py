"""DiffSeg per-image cost by stage, images/s and peak memory.

Stages: decode (bytes -> RGB), VAE encode, UNet with attention capture, aggregation, merge,
labeling, RLE encoding. Models: ``tiny`` (the test model) and ``sd15-random`` (an SD-1.5-shaped
UNet/VAE/CLIP built from configs with random weights: the real cost of SD 1.x without a download),
or any model name ``labeler run --model`` accepts.

    python bench/diffseg_bench.py --model tiny --images 8 --batch-size 4
    python bench/diffseg_bench.py --model sd15-random --images 2 --batch-size 1
    python bench/diffseg_bench.py --model sd15-random --device cuda --images 32 --batch-size 8
    python bench/diffseg_bench.py --model sd15-random --device cuda --dtype bfloat16 \
        --batch-sizes 1,2,4,8,16,32 --compile
    python bench/diffseg_bench.py --model tiny --images 4 --batch-size 2 --names red,green,blue
    python bench/diffseg_bench.py --model tiny --images 8 --batch-size 4 --captioner tiny
    python bench/diffseg_bench.py --model tiny --batch-size 4 --captioner tiny --nouns --repeats 20

Prints a table (seconds per image per stage) and a JSON line with the same figures; with
``--batch-sizes`` one table and JSON line per batch size as each finishes (``--images`` is then at
least the batch size) and a last JSON line holding them all (``sweep``). ``--compile`` wraps the
UNet in ``torch.compile``; the first warm-up batch of each batch size (the compilation of its
shape) is timed apart (``first_batch_s``) from the steady state. Every line carries the process
CPU seconds per image and the load average (a shared machine's wall times measure the neighbours).

``--attention random|world`` times the post-processing alone (aggregation, merge, labeling at
``--output-size``; no model) on SD-shaped attention (sides 64, 32, 16, 8), CPU seconds per image
per stage and the proposals left: ``random`` is the near-uniform attention of random weights
(softmax of small Gaussian logits), ``world`` the blocky attention of a real image: each query
attends to keys of its own region of a synthetic world
(:func:`labeler.testing.worlds.region_world`), falling off with distance:

    python bench/diffseg_bench.py --attention world --images 4 --batch-sizes 1,4

``--captioner NAME`` names the segments from each image's caption (on synthetic colour worlds,
which the tiny captioner captions with their colours); ``--nouns`` times only what caption naming
adds between the caption and the UNet: the captions' nouns through the text encoder and each
image's names row (the captioner's own ``generate`` left out), milliseconds of wall and process
CPU per image over ``--repeats`` passes of ``--images`` worlds, with the text-encoder calls per
batch (it reads the segmenter's ``_caption_vocabularies``, the same step before and after a
change, so run it against two checkouts with ``PYTHONPATH``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from labeler.io.decode import decode_image
from labeler.methods.diffseg.algorithm import (
    DiffSegOptions,
    _side_of,
    aggregate_attention,
    labels_from_proposals,
    merge_proposals,
    workspace,
)
from labeler.methods.diffseg.segmenter import DiffSeg
from labeler.models.backbone import Backbone, default_dtype, load_backbone
from labeler.models.captioner import load_captioner
from labeler.models.tiny.captioner import UNNAMED_COLOURS
from labeler.models.tiny.names import COLOUR_NAMES
from labeler.output.rle import encode_label_map
from labeler.testing.worlds import colour_world, region_world
from labeler.timing import StageTimer

SAMPLES = Path(__file__).resolve().parent.parent / "labeler" / "data" / "samples"
#: The self-attention sides of SD 1.x/2.x at 512 px.
SD_SIDES = (64, 32, 16, 8)


def sd15_random_backbone(device: torch.device, dtype: torch.dtype) -> Backbone:
    """SD 1.5 architecture (UNet, VAE, CLIP ViT-L text encoder) with seeded random weights."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from labeler.models.tiny.model import SCHEDULER_CONFIG, tokenizer_vocabulary

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
        scaling_factor=0.18215,
    )
    vocab, merges = tokenizer_vocabulary()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=768,
            intermediate_size=3072,
            num_attention_heads=12,
            num_hidden_layers=12,
            vocab_size=49408,
            max_position_embeddings=77,
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
        )
    )
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False).eval()
    unet.to(device, dtype)
    vae.to(device, dtype)
    text_encoder.to(device)
    return Backbone(
        "sd15-random",
        unet,
        vae,
        text_encoder,
        tokenizer,
        DDIMScheduler(**SCHEDULER_CONFIG),
        device,
        dtype,
    )


def load_images(count: int) -> list[bytes]:
    """``count`` encoded sample photos (the bundled ones, cycled)."""
    files = sorted(f for f in SAMPLES.iterdir() if f.suffix.lower() in {".jpg", ".png", ".webp"})
    return [files[i % len(files)].read_bytes() for i in range(count)]


def peak_memory_mib(device: torch.device) -> dict:
    figures = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        figures["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return figures


def random_attention(batch: int, side: int, rng: np.random.Generator) -> torch.Tensor:
    """(batch, side², side²) row-stochastic: softmax of N(0, 0.5²) logits (random weights)."""
    logits = torch.from_numpy(rng.standard_normal((batch, side * side, side * side), np.float32))
    return torch.softmax(logits * 0.5, dim=-1)


def world_attention(regions: np.ndarray, side: int) -> torch.Tensor:
    """(side², side²) row-stochastic attention of one synthetic world at one side.

    Query q attends to key k with logit ``6 [region(q) = region(k)] - d(q, k)² / (2 (side/4)²)``
    (d in cells), so proposals follow the world's regions as a trained model's do.

    Args:
        regions: (H, W) int region map, H = W a multiple of ``side``.
    """
    step = regions.shape[0] // side
    cells = torch.from_numpy(regions[step // 2 :: step, step // 2 :: step][:side, :side]).flatten()
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    position = torch.stack([yy.flatten(), xx.flatten()], -1).float()
    logits = 6.0 * (cells[:, None] == cells[None, :]).float()
    logits -= torch.cdist(position, position) ** 2 / (2 * (side / 4) ** 2)
    return torch.softmax(logits, dim=-1)


def make_attention(kind: str, batch: int, seed: int,
                   sides: tuple[int, ...] = SD_SIDES) -> dict[int, torch.Tensor]:
    """``{side: (batch, side², side²)}`` attention of ``kind`` (random or world)."""
    rng = np.random.default_rng(seed)
    if kind == "random":
        return {side: random_attention(batch, side, rng) for side in sides}
    worlds = [region_world(rng, 512)[1] for _ in range(batch)]
    return {side: torch.stack([world_attention(w, side) for w in worlds]) for side in sides}


def label_each(proposals: list[torch.Tensor], side: int, output_size: int) -> list:
    """The labeling step of every image of a batch."""
    return [labels_from_proposals(p, side, output_size) for p in proposals]


def run_postprocess(args: argparse.Namespace, batch_size: int) -> dict:
    """Seconds per image (process CPU and wall) of aggregation, merge and labeling on
    ``args.attention`` maps on ``args.device`` (made before the timing)."""
    device = torch.device(args.device)
    options = DiffSegOptions()
    batches = [{side: maps.to(device) for side, maps in
                make_attention(args.attention, batch_size, seed, args.sides).items()}
               for seed in range(-(-max(args.images, batch_size) // batch_size))]
    stages = ("aggregate", "merge", "labeling")
    cpu, wall = dict.fromkeys(stages, 0.0), dict.fromkeys(stages, 0.0)
    proposals_kept = []

    def timed(stage, function, *arguments, **keywords):
        started, process = time.perf_counter(), time.process_time()
        result = function(*arguments, **keywords)
        if device.type == "cuda":
            torch.cuda.synchronize()
        cpu[stage] += time.process_time() - process
        wall[stage] += time.perf_counter() - started
        return result

    buffer = None  # P's workspace, reused batch after batch as DiffSeg.label_raw does
    for attention in batches:
        buffer = workspace(buffer, attention)
        aggregated = timed("aggregate", aggregate_attention, attention, options.weight_map,
                           out=buffer[:batch_size])
        proposals = timed("merge", merge_proposals, aggregated, options.schedule,
                          options.grid_points, eps=options.eps)
        side = _side_of(aggregated.shape[-1])
        timed("labeling", label_each, proposals, side, args.output_size)
        proposals_kept += [len(p) for p in proposals]
    images = len(batches) * batch_size
    figures = {"attention": args.attention, "sides": list(args.sides), "device": str(device),
               "batch_size": batch_size,
               "images": images, "output_size": args.output_size,
               "threads": torch.get_num_threads(),
               "cpu_s_per_image": {k: v / images for k, v in cpu.items()},
               "cpu_s_per_image_total": sum(cpu.values()) / images,
               "wall_s_per_image": {k: v / images for k, v in wall.items()},
               "proposals_mean": float(np.mean(proposals_kept)),
               "load_average": os.getloadavg()}
    sys.stdout.write(json.dumps(figures) + "\n")
    sys.stdout.flush()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attention", choices=["random", "world"],
                        help="time the post-processing alone on this attention (no model)")
    parser.add_argument("--output-size", type=int, default=512,
                        help="label side of --attention's labeling")
    parser.add_argument("--sides", type=lambda text: tuple(int(v) for v in text.split(",")),
                        default=SD_SIDES, help="attention sides of --attention (default 64,32,16,8)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--input-size", type=int, dest="input_size",
                        help="model input side (default: the model's; >= 128 for 16 anchors)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1, help="batches run before timing")
    parser.add_argument("--batch-sizes", help="comma-separated sweep, e.g. 1,2,4,8,16,32")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    parser.add_argument("--names", help="comma-separated vocabulary to name segments with")
    parser.add_argument("--captioner", help="name segments from each image's caption (tiny, ...)")
    parser.add_argument("--nouns", action="store_true",
                        help="with --captioner: time the nouns' text encoding alone")
    parser.add_argument("--repeats", type=int, default=10, help="passes of --nouns")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.attention:
        sizes = [int(part) for part in (args.batch_sizes or str(args.batch_size)).split(",")]
        for batch_size in sizes:
            run_postprocess(args, batch_size)
        return 0

    device = torch.device(args.device)
    dtype = default_dtype(device) if args.dtype == "auto" else getattr(torch, args.dtype)
    if args.model == "sd15-random":
        backbone = sd15_random_backbone(device, dtype)
    else:
        backbone = load_backbone(args.model, device=device, dtype=dtype)
    if args.input_size:  # a smaller model input (the smoke run's): the UNet's sample size
        backbone.unet.register_to_config(sample_size=args.input_size // backbone.vae_scale)
    if args.compile:
        backbone.unet = torch.compile(backbone.unet)
    names = tuple(args.names.split(",")) if args.names else None
    captioner = load_captioner(args.captioner, backbone.device, backbone.dtype) if args.captioner else None
    diffseg = DiffSeg(backbone, DiffSegOptions(names=names, captioner=args.captioner), captioner)
    if args.nouns:
        run_nouns(diffseg, args)
        return 0
    if not args.batch_sizes:
        run_one(diffseg, args, device, dtype, args.batch_size, args.images)
        return 0
    sweep = []
    for batch_size in (int(part) for part in args.batch_sizes.split(",")):
        sweep.append(run_one(diffseg, args, device, dtype, batch_size,
                             max(args.images, batch_size)))
    sys.stdout.write(json.dumps({"model": args.model, "device": str(device),
                                 "dtype": str(dtype).removeprefix("torch."),
                                 "compile": args.compile, "sweep": sweep}) + "\n")
    return 0


def colour_worlds(count: int, size: int = 128) -> list[bytes]:
    """``count`` PNG-encoded colour worlds (shapes of tiny's colour words and unnamed colours)."""
    palette = np.array([*COLOUR_NAMES.values(), *UNNAMED_COLOURS])
    rng = np.random.default_rng(0)
    blobs = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(colour_world(rng, palette, size)[0]).save(buffer, "PNG")
        blobs.append(buffer.getvalue())
    return blobs


def run_nouns(diffseg: DiffSeg, args: argparse.Namespace) -> dict:
    """Time caption naming's text side alone: the vocabulary step of each batch minus its
    ``caption`` stage (the captioner's ``generate``); print and return the figures."""
    images = [decode_image(blob).pixels for blob in colour_worlds(args.images)]
    batches = [images[start:start + args.batch_size]
               for start in range(0, len(images), args.batch_size)]
    calls = []
    hook = diffseg.backbone.text_encoder.register_forward_hook(
        lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    with torch.no_grad():
        diffseg._caption_vocabularies(batches[0])  # warm-up: the empty prompt encoded, cached
        calls.clear()
        diffseg.timer = StageTimer()
        started, cpu = time.perf_counter(), time.process_time()
        nouns = 0
        for _ in range(args.repeats):
            for batch in batches:
                _, vocabularies = diffseg._caption_vocabularies(batch)
                nouns += sum(len(vocabulary.names) for vocabulary in vocabularies)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    hook.remove()
    captioning = diffseg.timer.seconds.get("caption", 0.0)
    count = args.repeats * len(images)
    figures = {
        "model": args.model, "captioner": args.captioner, "batch_size": args.batch_size,
        "images": count, "nouns_per_image": nouns / count,
        "text_encoder_calls_per_batch": len(calls) / (args.repeats * len(batches)),
        "prompts_encoded_per_image": sum(calls) / count,
        "nouns_ms_per_image": 1000 * (wall - captioning) / count,
        "caption_ms_per_image": 1000 * captioning / count,
        "cpu_ms_per_image_with_caption": 1000 * cpu / count,
        "load_average": os.getloadavg(),
    }
    sys.stdout.write(json.dumps(figures) + "\n")
    return figures


def run_one(diffseg: DiffSeg, args: argparse.Namespace, device: torch.device, dtype: torch.dtype,
            batch_size: int, images_count: int) -> dict:
    """Time ``images_count`` images in batches of ``batch_size``; print and return the figures."""
    args = argparse.Namespace(**{**vars(args), "batch_size": batch_size, "images": images_count})
    blobs = colour_worlds(args.images) if args.captioner else load_images(args.images)
    first_batch_s = None  # the first warm-up batch: with --compile, the compilation of its shape
    for _ in range(args.warmup):
        started = time.perf_counter()
        diffseg.label([decode_image(blobs[0]).pixels] * min(args.batch_size, args.images))
        if device.type == "cuda":
            torch.cuda.synchronize()
        if first_batch_s is None:
            first_batch_s = time.perf_counter() - started
    diffseg.timer = StageTimer()
    timer = diffseg.timer
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started, cpu = time.perf_counter(), time.process_time()
    for start in range(0, args.images, args.batch_size):
        with timer.stage("decode"):
            images = [decode_image(blob).pixels for blob in blobs[start : start + args.batch_size]]
        results = diffseg.label(images)
        with timer.stage("rle"):
            for result in results:
                encode_label_map(result.label_map, len(result.category_ids))
    if device.type == "cuda":
        torch.cuda.synchronize()
    total = time.perf_counter() - started
    cpu = time.process_time() - cpu

    per_image = {stage: seconds / args.images for stage, seconds in timer.seconds.items()}
    order = ["decode", "caption", "nouns", "vae_encode", "unet_capture", "aggregate", "merge",
             "labeling", "naming", "rle"]
    sys.stdout.write(
        f"model={args.model} device={device} dtype={dtype} images={args.images} "
        f"batch={args.batch_size}\n"
    )
    sys.stdout.write(f"{'stage':<14}{'s/image':>10}{'share':>8}\n")
    for stage in order:
        seconds = per_image.get(stage, 0.0)
        sys.stdout.write(f"{stage:<14}{seconds:>10.4f}{seconds / (total / args.images):>8.1%}\n")
    memory = peak_memory_mib(device)
    sys.stdout.write(
        f"{'total':<14}{total / args.images:>10.4f}   images/s {args.images / total:.3f}\n"
    )
    sys.stdout.write("".join(f"{k} {v:.0f}\n" for k, v in memory.items()))
    figures = {
        "model": args.model,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "batch_size": args.batch_size,
        "images": args.images,
        "compile": args.compile,
        "names": args.names,
        "captioner": args.captioner,
        "per_image_s": per_image,
        "images_per_s": args.images / total,
        "cpu_s_per_image": cpu / args.images,
        "first_batch_s": first_batch_s,
        "load_average": os.getloadavg(),
        **memory,
    }
    sys.stdout.write(json.dumps(figures) + "\n")
    sys.stdout.flush()
    return figures


if __name__ == "__main__":
    sys.exit(main())
