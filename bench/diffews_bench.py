"""DiffewS benchmark: seconds and peak memory per query, cached vs uncached support, n shots.

Per query, the reference pipeline re-encodes the support (2n VAE encodes), re-runs the support
pass (UNet, batch n), then the query pass and the VAE decoder; with a cached bank only the query's
encode, its pass and the decoder remain. The script times both on randomly initialised weights
with the shapes of SD 2.1 (``sd21``, the same builder as ``slime_bench.py``) or on ``tiny``, at
512 px, for each shot count, and reports the bank's memory per shot and the VAE decoder's share
of a cached query. Memory is the peak above the loaded model (CUDA allocator peak, or sampled RSS
on CPU).

Usage::

    python bench/diffews_bench.py --model sd21 --shots 1,5 --queries 2 --device cpu
    python bench/diffews_bench.py --model sd21 --shots 1,5 --queries 16 --device cuda --dtype float16
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from slime_bench import PeakMemory, build_backbone

from labeler.methods.diffews.algorithm import decode_soft_maps, mask_latent_from_output
from labeler.methods.diffews.attention import install_kv_fusion
from labeler.methods.diffews.model import duplicate_and_halve, install_dual_conv
from labeler.methods.diffews.support import (
    TIMESTEP,
    empty_context,
    record_bank,
    support_latents,
)
from labeler.methods.preprocess import images_to_model_input


def _sync(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def synthetic_support(shots: int, size: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    generator = np.random.default_rng(seed)
    images = [generator.integers(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(shots)]
    masks = []
    for _ in range(shots):
        mask = np.zeros((size, size), bool)
        top, left = generator.integers(0, size // 2, 2)
        mask[top : top + size // 3, left : left + size // 3] = True
        masks.append(mask)
    return images, masks


@torch.no_grad()
def one_query(backbone, fusion, context, image, bank=None, support=None, size=512) -> dict:
    """Seconds by stage of one query; ``support`` given = recompute the bank first (uncached)."""
    device = backbone.device
    times = {}
    start = _sync(device)
    if support is not None:
        latents = support_latents(backbone, *support, size)
        times["support_encode"] = _sync(device) - start
        bank = record_bank(backbone.unet, fusion, latents, context, shots=len(support[0]))
        times["support_pass"] = _sync(device) - start - times["support_encode"]
    mark = _sync(device)
    query = backbone.encode_images(images_to_model_input([image], size))
    times["query_encode"] = _sync(device) - mark
    mark = _sync(device)
    fusion.read(bank)
    timesteps = torch.full((1,), TIMESTEP, dtype=torch.long, device=device)
    output = backbone.unet(query, timesteps, encoder_hidden_states=context).sample
    fusion.off()
    times["query_pass"] = _sync(device) - mark
    mark = _sync(device)
    decode_soft_maps(backbone.vae, mask_latent_from_output(output))
    times["decode"] = _sync(device) - mark
    times["total"] = _sync(device) - start
    return times


def run(args: argparse.Namespace) -> list[dict]:
    backbone = build_backbone(args.model, args.device, args.dtype)
    install_dual_conv(backbone.unet, duplicate_and_halve(backbone.unet.conv_in))
    fusion = install_kv_fusion(backbone.unet)
    context = empty_context(backbone)
    size = args.size
    rows = []
    for shots in [int(n) for n in args.shots.split(",")]:
        support = synthetic_support(shots, size, seed=shots)
        queries = synthetic_support(args.queries, size, seed=100 + shots)[0]
        bank = record_bank(backbone.unet, fusion, support_latents(backbone, *support, size), context, shots)
        for mode in ("uncached", "cached"):
            timings = []
            with PeakMemory(backbone.device) as memory:
                for image in queries:
                    if mode == "cached":
                        timings.append(one_query(backbone, fusion, context, image, bank=bank, size=size))
                    else:
                        timings.append(one_query(backbone, fusion, context, image, support=support, size=size))
            stages = {key: statistics.median(t[key] for t in timings) for key in timings[0]}
            rows.append({"model": args.model, "device": str(backbone.device), "dtype": str(backbone.dtype),
                         "shots": shots, "mode": mode, "s_per_query": stages["total"],
                         "peak_gib": memory.above_base, "bank_mib_per_shot": bank.nbytes() / shots / 2**20,
                         "decoder_share": stages["decode"] / stages["total"], "stages": stages})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="sd21", choices=["tiny", "sd21"])
    parser.add_argument("--shots", default="1,5")
    parser.add_argument("--queries", type=int, default=2)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = run(args)
    print("| model | shots | support | s/query | peak above model | bank MiB/shot | VAE decoder share |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['model']} | {row['shots']} | {row['mode']} | {row['s_per_query']:.2f} | "
              f"{row['peak_gib']:.2f} GiB | {row['bank_mib_per_shot']:.1f} | {row['decoder_share']:.0%} |")
    for shots in sorted({row["shots"] for row in rows}):
        pair = {row["mode"]: row["s_per_query"] for row in rows if row["shots"] == shots}
        print(f"{shots}-shot: uncached / cached time ratio {pair['uncached'] / pair['cached']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
