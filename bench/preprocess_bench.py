"""The model input alone: CPU ms per image of ``images_to_model_input`` (resize to a square
model input, scale to [-1, 1]), against the implementation it replaced.

Each size gets ``--distinct`` photo-like images (read-only, as decoded images are); each way is
timed ``--repeat`` times over the whole batch, the two ways interleaved so that both meet the
same load, and the least thread CPU time is kept (one torch thread, as a one-CPU worker). The
replaced implementation is the oracle of ``tests/test_preprocess.py`` (the outputs are checked
bit-identical on the way). With ``--device cuda`` the new way resizes on the GPU and its figure
is the host CPU time (the copy of each image's bytes, the upload and the kernel launches, the
device synchronised before the clock stops). Every row is printed with the load average.

    python bench/preprocess_bench.py
    python bench/preprocess_bench.py --sizes 1024x768,1008x756,512x512 --repeat 15 --json
    python bench/preprocess_bench.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from labeler.methods.preprocess import images_to_model_input
from tests.test_preprocess import oracle_model_input, photo


def host_ms(call, device: torch.device) -> float:
    """Thread CPU ms of one call (the device synchronised before the clock stops)."""
    started = time.thread_time()
    call()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 1000 * (time.thread_time() - started)


def measure(size: tuple[int, int], side: int, antialias: bool, args: argparse.Namespace) -> dict:
    width, height = size
    device = torch.device(args.device)
    images = [photo(height, width, seed) for seed in range(args.distinct)]
    new = images_to_model_input(images, side, antialias, device=device)
    old = oracle_model_input(images, side, antialias, "float")
    if device.type == "cpu" and not torch.equal(new, old):
        raise RuntimeError("the model input differs from the replaced implementation's")
    difference = float((new.cpu() - old).abs().max())
    times: dict[str, list[float]] = {"replaced": [], "now": []}
    for _ in range(args.repeat):
        times["replaced"].append(host_ms(
            lambda: oracle_model_input(images, side, antialias, "float"), torch.device("cpu")))
        times["now"].append(host_ms(
            lambda: images_to_model_input(images, side, antialias, device=device), device))
    return {"size": f"{width}x{height}", "side": side, "antialias": antialias,
            "device": str(device), "images": len(images),
            "replaced_cpu_ms_per_image": round(min(times["replaced"]) / len(images), 3),
            "now_cpu_ms_per_image": round(min(times["now"]) / len(images), 3),
            "max_abs_difference": difference,
            "load_average": [round(v, 2) for v in os.getloadavg()]}


def parse_sizes(text: str) -> list[tuple[int, int]]:
    try:
        sizes = [tuple(int(v) for v in part.lower().split("x")) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sizes must be WxH[,WxH...], got {text!r}") from None
    if any(len(size) != 2 or min(size) < 1 for size in sizes):
        raise argparse.ArgumentTypeError(f"--sizes must be WxH[,WxH...], got {text!r}")
    return sizes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=parse_sizes,
                        default=parse_sizes("1024x768,1008x756,512x512"))
    parser.add_argument("--side", type=int, default=512, help="the model input's side")
    parser.add_argument("--distinct", type=int, default=8, help="images per batch")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--device", default="cpu", help="where the new way resizes (cpu, cuda)")
    parser.add_argument("--json", action="store_true", help="end with one JSON line of all rows")
    args = parser.parse_args()
    if min(args.side, args.distinct, args.repeat) < 1:
        parser.error("--side, --distinct and --repeat must be >= 1")
    torch.set_num_threads(1)  # what a one-CPU worker gets
    rows = []
    for size in args.sizes:
        for antialias in (True, False):
            rows.append(measure(size, args.side, antialias, args))
            sys.stdout.write(json.dumps(rows[-1]) + "\n")
            sys.stdout.flush()
    if args.json:
        sys.stdout.write(json.dumps({"benchmark": "preprocess", "rows": rows}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
