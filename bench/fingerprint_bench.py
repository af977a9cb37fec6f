"""What the model's weights digest costs a run's fingerprint: bytes read and wall time of
:func:`labeler.models.fingerprint.named_weights_digest` on the tiny model's folder and on a
synthetic diffusers-shaped folder of safetensors files (``--size-gb``, default 2), warm (the files
in the page cache) and cold (evicted with ``posix_fadvise(DONTNEED)`` first: no root needed).

    .venv/bin/python bench/fingerprint_bench.py --size-gb 2 --work /tmp/fprint-bench
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import tempfile
import time
from pathlib import Path

from labeler.models.fingerprint import WEIGHT_SUFFIXES, named_weights_digest
from labeler.models.tiny.model import tiny_model_dir

#: The shares of an SD-1.5-shaped folder's weights, per component.
SHARES = {"unet": 0.74, "text_encoder": 0.18, "vae": 0.08}
CHUNK = 64 * 1024 * 1024


def write_synthetic(folder: Path, size: int) -> None:
    """A diffusers-shaped folder: one safetensors file per component (one U8 tensor of random
    bytes, ``size`` bytes in all)."""
    for component, share in SHARES.items():
        nbytes = int(size * share)
        header = json.dumps({"weight": {"dtype": "U8", "shape": [nbytes],
                                        "data_offsets": [0, nbytes]}}).encode()
        (folder / component).mkdir(parents=True, exist_ok=True)
        with (folder / component / "diffusion_pytorch_model.safetensors").open("wb") as handle:
            handle.write(struct.pack("<Q", len(header)) + header)
            for start in range(0, nbytes, CHUNK):
                handle.write(os.urandom(min(CHUNK, nbytes - start)))
            handle.flush()
            os.fsync(handle.fileno())


def evict(folder: Path) -> None:
    """Drop the folder's weight files from the page cache (clean pages: no root needed)."""
    for path in folder.rglob("*"):
        if path.suffix in WEIGHT_SUFFIXES:
            descriptor = os.open(path, os.O_RDONLY)
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(descriptor)


def bytes_read() -> int:
    """This process's bytes read so far (``rchar`` of /proc/self/io)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError("no rchar in /proc/self/io")


def measure(folder: Path, repeats: int) -> dict:
    weights = sum(p.stat().st_size for p in folder.rglob("*") if p.suffix in WEIGHT_SUFFIXES)
    figures: dict = {"folder": str(folder), "weight_bytes": weights}
    for mode in ("cold", "warm"):
        seconds = []
        for _ in range(repeats):
            if mode == "cold":
                evict(folder)
            before, started = bytes_read(), time.perf_counter()
            named_weights_digest(str(folder), "model")
            seconds.append(time.perf_counter() - started)
            figures["bytes_read"] = bytes_read() - before
        figures[f"{mode}_ms_median"] = round(1000 * statistics.median(seconds), 2)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--work", help="where the synthetic folder is written (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.work) as work:
        synthetic = Path(work) / "model"
        write_synthetic(synthetic, int(args.size_gb * 1024**3))
        for folder in (tiny_model_dir(), synthetic):
            print(json.dumps(measure(folder, args.repeats)))


if __name__ == "__main__":
    main()
