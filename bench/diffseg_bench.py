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

Prints a table (seconds per image per stage) and a JSON line with the same figures; with
``--batch-sizes`` one table per batch size (``--images`` is then at least the batch size) and a
last JSON line holding them all (``sweep``). ``--compile`` wraps the UNet in ``torch.compile``
(warm-up batches compile it, outside the timing).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

from labeler.io.decode import decode_image
from labeler.methods.diffseg.algorithm import DiffSegOptions
from labeler.methods.diffseg.segmenter import DiffSeg
from labeler.models.backbone import Backbone, default_dtype, load_backbone
from labeler.output.rle import encode_label_map
from labeler.timing import StageTimer

SAMPLES = Path(__file__).resolve().parent.parent / "labeler" / "data" / "samples"


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1, help="batches run before timing")
    parser.add_argument("--batch-sizes", help="comma-separated sweep, e.g. 1,2,4,8,16,32")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    args = parser.parse_args()

    device = torch.device(args.device)
    dtype = default_dtype(device) if args.dtype == "auto" else getattr(torch, args.dtype)
    if args.model == "sd15-random":
        backbone = sd15_random_backbone(device, dtype)
    else:
        backbone = load_backbone(args.model, device=device, dtype=dtype)
    if args.compile:
        backbone.unet = torch.compile(backbone.unet)
    diffseg = DiffSeg(backbone, DiffSegOptions())
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


def run_one(diffseg: DiffSeg, args: argparse.Namespace, device: torch.device, dtype: torch.dtype,
            batch_size: int, images_count: int) -> dict:
    """Time ``images_count`` images in batches of ``batch_size``; print and return the figures."""
    args = argparse.Namespace(**{**vars(args), "batch_size": batch_size, "images": images_count})
    blobs = load_images(args.images)
    for _ in range(args.warmup):
        diffseg.label([decode_image(blobs[0]).pixels] * min(args.batch_size, args.images))
    diffseg.timer = StageTimer()
    timer = diffseg.timer
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
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

    per_image = {stage: seconds / args.images for stage, seconds in timer.seconds.items()}
    order = ["decode", "vae_encode", "unet_capture", "aggregate", "merge", "labeling", "rle"]
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
        "per_image_s": per_image,
        "images_per_s": args.images / total,
        **memory,
    }
    sys.stdout.write(json.dumps(figures) + "\n")
    return figures


if __name__ == "__main__":
    sys.exit(main())
