"""Peak memory of a worker labeling huge images: the decoder's per-image bound, measured.

Writes two SIDE x SIDE PNGs (a few hundred KB each), labels them as one shard at batch 2 with
DiffSeg on the offline ``tiny`` model, in this process (what a worker does), and prints the peak
resident memory (``ru_maxrss``), the peak after loading the model, and the sizes recorded for
the images (which must be the stored ones). ``--side 512`` gives the method's own footprint.

    .venv/bin/python bench/huge_images.py --side 9400
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from labeler.config import build_config
from labeler.io.folders import Folder
from labeler.runtime.plan import plan_run
from labeler.runtime.run_folder import RunFolder
from labeler.runtime.shard import ShardProcessor


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_images(folder: Path, side: int) -> list[Path]:
    """Two PNGs of side x side: four flat quadrants each (they compress to a few hundred KB)."""
    paths = []
    for index, colours in enumerate([((200, 30, 30), (30, 200, 30)), ((30, 30, 200), (200, 200, 30))]):
        image = Image.new("RGB", (side, side), colours[0])
        image.paste(Image.new("RGB", (side // 2, side // 2), colours[1]), (0, 0))
        path = folder / f"huge_{index}.png"
        image.save(path, "PNG")
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=9400)
    parser.add_argument("--work", help="folder for the images and the output (default: a temp one)")
    parser.add_argument("--json", action="store_true", help="last line: the figures as JSON")
    parser.add_argument("--write-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="labeler-huge-"))
    if args.write_only:
        write_images(work, args.side)
        return
    # the images are made in another process: this one's peak is the worker's alone
    subprocess.run([sys.executable, __file__, "--side", str(args.side), "--work", str(work),
                    "--write-only"], check=True)
    paths = sorted(work.glob("huge_*.png"))
    config = build_config({}, {"input": str(work), "output": str(work / "out"),
                               "method": "diffseg", "model": "tiny", "device": "cpu"})
    segmenter = config.build_segmenter("cpu")
    loaded = peak_rss_mb()
    run = RunFolder(Folder(str(work / "out")))
    shard_id = plan_run(run, [{"uri": str(p)} for p in paths], shard_size=2)["shards"][0]["shard_id"]
    started = time.perf_counter()
    stats = ShardProcessor(segmenter, 2, None, "bench").process(run.output, shard_id)
    seconds = time.perf_counter() - started
    with run.output.open(run.shard_part(shard_id, "images.parquet")) as handle:
        rows = pq.read_table(handle).to_pylist()
    figures = {
        "side": args.side,
        "file_kb": [round(p.stat().st_size / 1024) for p in paths],
        "labeled": stats["labeled"],
        "failed": stats["failed"],
        "coco_sizes": [[row["width"], row["height"]] for row in rows],
        "peak_rss_mb": round(peak_rss_mb()),
        "peak_rss_model_loaded_mb": round(loaded),
        "seconds": round(seconds, 1),
        "mean_annotations": float(np.mean([row["n_annotations"] for row in rows])),
    }
    for name, value in figures.items():
        print(f"{name}: {value}")
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
