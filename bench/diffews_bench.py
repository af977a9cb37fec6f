"""DiffewS benchmark: seconds and peak memory per query, cached vs uncached support, n shots.

Per query, the reference pipeline re-encodes the support (2n VAE encodes: n images, n masks),
re-runs the support pass (one UNet call of batch n), then the query's encode, its KV-fusion pass
and the VAE decoder; with a cached bank only the last three remain. One class (background + one),
so one bank. Models: randomly initialised weights with the shapes of SD 2.1 (``sd21``, the builder
of ``slime_bench.py``) or ``tiny``, at 512 px.

Every configuration (shots x cached/uncached) runs in its own subprocess, so its peak memory is
its own: the process's peak RSS (``ru_maxrss``, model included) and the peak above the loaded
model during the timed queries (5 ms RSS sampler; CUDA: allocator peak). Order: 1-shot uncached
(it also saves its bank, the real output of a support pass, to a safetensors file), 1-shot
cached, then the same for each larger shot count; a cached n-shot run loads that bank and
concatenates n copies (the n-shot bank of n one-shot banks, token-wise: same shapes, same cost).
Each finished configuration is appended to ``--json`` at once and logged with a timestamp, so an
interrupted run still reports what it finished.

A query's stages are timed in wall and in process CPU seconds (all threads); forward hooks count
the rows through the UNet, the VAE encoder and the VAE decoder, so every row also gives seconds
per UNet row (support rows, the query's row) and per VAE encode/decode. On a shared machine wall
time measures the neighbours; CPU seconds and the pass counts do not (much). The summary gives,
per shot count, the uncached/cached ratio measured (wall, CPU) and the ratio the pass counts
predict with pooled per-row CPU costs, next to the analytic FLOP ratio (7.58/4.55 TFLOP for 1
shot, 20.2/5.04 for 5, SD 2.1 at 512 px).

Usage::

    python bench/diffews_bench.py --model tiny --shots 1,5 --json diffews_tiny.json
    python bench/diffews_bench.py --model sd21 --shots 1,5 --warmup 0 --repeats 1 --json sd21.json
    python bench/diffews_bench.py --model sd21 --shots 1,5 --device cuda --dtype float16 --repeats 8
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from slime_bench import PeakMemory, build_backbone

from labeler.methods.diffews.algorithm import decode_soft_maps, mask_latent_from_output
from labeler.methods.diffews.attention import SupportBank, install_kv_fusion
from labeler.methods.diffews.model import duplicate_and_halve, install_dual_conv
from labeler.methods.diffews.support import TIMESTEP, empty_context, record_bank, support_latents
from labeler.methods.preprocess import images_to_model_input

logger = logging.getLogger("diffews_bench")

#: Analytic TFLOP per query (SD 2.1, 512 px; matmul/conv FLOPs = 2 x MAC), uncached and cached.
FLOP_TFLOP = {1: (7.58, 4.55), 5: (20.2, 5.04)}


class Clock:
    """Wall and process-CPU seconds of consecutive stages (CUDA synchronised)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._mark = self._now()

    def _now(self) -> tuple[float, float]:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter(), time.process_time()

    def stage(self, name: str) -> None:
        """Close the stage that started at the previous call (or at construction)."""
        now = self._now()
        self.wall[name] = now[0] - self._mark[0]
        self.cpu[name] = now[1] - self._mark[1]
        self._mark = self._now()


class RowCounter:
    """Rows (batch entries) through a module's forward, counted by a pre-hook."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.rows = 0
        module.register_forward_pre_hook(self._count)

    def _count(self, _module, args) -> None:
        self.rows += len(args[0])


def synthetic_support(shots: int, size: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``shots`` random (size, size, 3) uint8 images and (size, size) bool masks (a square each)."""
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
def one_query(backbone, fusion, context, image, size, bank=None, support=None) -> tuple[Clock, SupportBank]:
    """Time one query by stage; ``support`` given = recompute the bank first (uncached).

    Returns:
        the stage clock and the bank the query read.
    """
    clock = Clock(backbone.device)
    if support is not None:
        latents = support_latents(backbone, *support, size)
        clock.stage("support_encode")
        bank = record_bank(backbone.unet, fusion, latents, context, shots=len(support[0]))
        clock.stage("support_pass")
    query = backbone.encode_images(images_to_model_input([image], size))
    clock.stage("query_encode")
    fusion.read(bank)
    timesteps = torch.full((1,), TIMESTEP, dtype=torch.long, device=backbone.device)
    output = backbone.unet(query, timesteps, encoder_hidden_states=context).sample
    fusion.off()
    clock.stage("query_pass")
    decode_soft_maps(backbone.vae, mask_latent_from_output(output))
    clock.stage("decode")
    return clock, bank


def child(args: argparse.Namespace) -> dict:
    """One configuration in this process: warm-up queries, then timed ones; one result row."""
    torch.manual_seed(0)
    start = time.perf_counter()
    backbone = build_backbone(args.model, args.device, args.dtype)
    install_dual_conv(backbone.unet, duplicate_and_halve(backbone.unet.conv_in))
    fusion = install_kv_fusion(backbone.unet)
    context = empty_context(backbone)
    load_s = time.perf_counter() - start
    size, shots, cached = args.size, args.shots, args.mode == "cached"
    support = synthetic_support(shots, size, seed=shots)
    queries = synthetic_support(args.warmup + args.repeats, size, seed=100 + shots)[0]
    bank = None
    if cached:
        one_shot = SupportBank.load(args.bank).to(backbone.device, backbone.dtype)
        bank = SupportBank.concat_shots([one_shot] * shots)
    counters = {"unet": RowCounter(backbone.unet), "vae_encoder": RowCounter(backbone.vae.encoder),
                "vae_decoder": RowCounter(backbone.vae.decoder)}
    for image in queries[: args.warmup]:
        one_query(backbone, fusion, context, image, size, bank=bank, support=None if cached else support)
    before = {name: counter.rows for name, counter in counters.items()}
    clocks = []
    with PeakMemory(backbone.device) as memory:
        for image in queries[args.warmup :]:
            clock, used = one_query(backbone, fusion, context, image, size, bank=bank,
                                    support=None if cached else support)
            clocks.append(clock)
    if not cached and args.save_bank:
        used.save(args.save_bank)
    rows = {name: (counter.rows - before[name]) / args.repeats for name, counter in counters.items()}
    wall = {key: statistics.median(c.wall[key] for c in clocks) for key in clocks[0].wall}
    cpu = {key: statistics.median(c.cpu[key] for c in clocks) for key in clocks[0].cpu}
    wall["total"], cpu["total"] = sum(wall.values()), sum(cpu.values())
    unit = {"query_pass_per_row": cpu["query_pass"],
            "vae_encode_per_row": (cpu["query_encode"] + cpu.get("support_encode", 0.0)) / rows["vae_encoder"],
            "vae_decode_per_row": cpu["decode"] / rows["vae_decoder"]}
    if not cached:
        unit["support_pass_per_row"] = cpu["support_pass"] / shots
    if backbone.device.type == "cuda":
        process_peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        process_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {
        "model": args.model, "device": str(backbone.device), "dtype": str(backbone.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(), "size": size, "shots": shots, "mode": args.mode,
        "warmup": args.warmup, "repeats": args.repeats, "load_s": load_s,
        "s_per_query": wall["total"], "cpu_s_per_query": cpu["total"],
        "wall_s": wall, "cpu_s": cpu, "rows_per_query": rows, "cpu_s_per_unit": unit,
        "decoder_share_wall": wall["decode"] / wall["total"], "decoder_share_cpu": cpu["decode"] / cpu["total"],
        "peak_above_model_gib": memory.above_base, "process_peak_gib": process_peak,
        "bank_mib": used.nbytes() / 2**20, "bank_mib_per_shot": used.nbytes() / shots / 2**20,
        "load_average": os.getloadavg(),
    }


def predicted_ratio(rows: list[dict], shots: int) -> float | None:
    """Uncached/cached CPU-time ratio from the pass counts.

    Uncached = cached + 2n VAE encodes + n support rows through the UNet; the cached n-shot row
    gives its own time and the cost of one encode (its query's), the uncached rows the CPU
    seconds per support row (median over them). The FLOP ratio is the same model in TFLOP.
    """
    cached = [row for row in rows if row["shots"] == shots and row["mode"] == "cached"]
    support = [row["cpu_s_per_unit"]["support_pass_per_row"] for row in rows if row["mode"] == "uncached"]
    if not cached or not support:
        return None
    total, encode = cached[0]["cpu_s_per_query"], cached[0]["cpu_s"]["query_encode"]
    return (total + 2 * shots * encode + shots * statistics.median(support)) / total


def summary(rows: list[dict]) -> dict:
    """Per shot count: the measured and predicted uncached/cached ratios."""
    out = {}
    for shots in sorted({row["shots"] for row in rows}):
        pair = {row["mode"]: row for row in rows if row["shots"] == shots}
        entry = {"predicted_from_pass_counts": predicted_ratio(rows, shots)}
        if len(pair) == 2:
            entry["measured_wall"] = pair["uncached"]["s_per_query"] / pair["cached"]["s_per_query"]
            entry["measured_cpu"] = pair["uncached"]["cpu_s_per_query"] / pair["cached"]["cpu_s_per_query"]
        if shots in FLOP_TFLOP and all(row["model"] == "sd21" for row in rows):
            entry["flop_ratio_sd21"] = FLOP_TFLOP[shots][0] / FLOP_TFLOP[shots][1]
        out[str(shots)] = entry
    return out


def write(path: Path | None, rows: list[dict]) -> None:
    if path is not None:
        path.write_text(json.dumps({"rows": rows, "ratios": summary(rows)}, indent=1) + "\n")


def table(rows: list[dict]) -> str:
    lines = [("| model | shots | support | s/query wall | CPU s/query | UNet rows | process peak | "
              "peak above model | bank MiB/shot | decoder share (CPU) |"), "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['shots']} | {row['mode']} | {row['s_per_query']:.2f} | "
            f"{row['cpu_s_per_query']:.2f} | {row['rows_per_query']['unet']:g} | {row['process_peak_gib']:.2f} GiB | "
            f"{row['peak_above_model_gib']:.2f} GiB | {row['bank_mib_per_shot']:.1f} | {row['decoder_share_cpu']:.0%} |")
    for shots, entry in summary(rows).items():
        figures = ", ".join(f"{key} {value:.2f}" for key, value in entry.items() if value is not None)
        lines.append(f"{shots}-shot uncached/cached: {figures}")
    return "\n".join(lines)


def parent(args: argparse.Namespace) -> list[dict]:
    """Run each configuration in a subprocess, cheapest first; write the JSON after each."""
    json_path = Path(args.json) if args.json else None
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="diffews-bench-") as work:
        bank_file = Path(work) / "bank-1shot.safetensors"
        plan = [(1, "uncached"), (1, "cached")] + [(n, mode) for n in args.shot_counts if n != 1
                                                    for mode in ("cached", "uncached")]
        if 1 not in args.shot_counts:  # the 1-shot uncached run only makes the bank then
            plan.remove((1, "cached"))
        for shots, mode in plan:
            command = [sys.executable, __file__, "--child", "--model", args.model, "--size", str(args.size),
                       "--device", args.device, "--shots", str(shots), "--mode", mode,
                       "--warmup", str(args.warmup), "--repeats", str(args.repeats), "--bank", str(bank_file)]
            if args.dtype:
                command += ["--dtype", args.dtype]
            if mode == "uncached" and shots == 1:
                command += ["--save-bank", str(bank_file)]
            logger.info("start: %d-shot %s (load average %.1f)", shots, mode, os.getloadavg()[0])
            started = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                logger.error("%d-shot %s failed (exit %d):\n%s", shots, mode, done.returncode, done.stderr[-3000:])
                sys.exit(1)
            row = json.loads(done.stdout.strip().splitlines()[-1])
            row["subprocess_s"] = time.perf_counter() - started
            if shots in args.shot_counts:
                rows.append(row)
                write(json_path, rows)
            logger.info("done: %d-shot %s in %.0f s: %.2f s/query wall, %.2f CPU s, process peak %.2f GiB",
                        shots, mode, row["subprocess_s"], row["s_per_query"], row["cpu_s_per_query"],
                        row["process_peak_gib"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="sd21", choices=["tiny", "sd21"])
    parser.add_argument("--shots", default="1,5", help="comma-separated shot counts (a child: one)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--warmup", type=int, default=1, help="untimed queries first (0: time the first pass)")
    parser.add_argument("--repeats", type=int, default=1, help="timed queries (the median is reported)")
    parser.add_argument("--json", help="write the rows and ratios here, after each configuration")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=["cached", "uncached"], help=argparse.SUPPRESS)
    parser.add_argument("--bank", help=argparse.SUPPRESS)
    parser.add_argument("--save-bank", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    if args.child:
        args.shots = int(args.shots)
        sys.stdout.write(json.dumps(child(args)) + "\n")
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    # a time limit's SIGTERM becomes SystemExit, so subprocess.run kills the running configuration
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args.shot_counts = [int(n) for n in args.shots.split(",")]
    rows = parent(args)
    sys.stdout.write(table(rows) + "\n")
    sys.stdout.write(json.dumps({"rows": rows, "ratios": summary(rows)}) + "\n")


if __name__ == "__main__":
    main()
