"""The ceiling benchmark runs the real shard path end to end (tiny sizes; figures unchecked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_ceiling_benchmark_labels_every_image_and_ends_with_json():
    command = [sys.executable, str(REPO / "bench" / "runtime_ceiling.py"), "--images", "5",
               "--size", "40x24", "--segments", "6", "--format", "png", "--batch-size", "2",
               "--shard-size", "3", "--model-ms-per-image", "1", "--json"]
    done = subprocess.run(command, capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["images"] == 5 and figures["images_per_second"] > 0
    assert 0 <= figures["model_idle_fraction"] < 1
    assert figures["annotations_per_image"] > 1  # Voronoi regions became annotations
    cpu = figures["cpu_ms_per_image"]
    assert set(cpu) >= {"decode", "compact", "encode", "commit", "process_total"}
    # the model input is built as the methods build it, and counted: the lanes add up
    assert cpu["preprocess"] > 0 and figures["wall_ms_per_image"]["preprocess"] > 0
    lanes = ("decode", "preprocess", "postprocess", "commit", "model_thread")
    assert abs(sum(cpu[lane] for lane in lanes) - cpu["process_total"]) <= 0.006
    # on the CPU: the process's CPU time less the relabelling an accelerator would do
    host = figures["host_ms_per_image_with_accelerator"]
    assert abs(host - (cpu["process_total"] - cpu["compact"])) <= 0.002  # each rounded to 0.001
    assert figures["host_images_per_second_with_accelerator"] > 0


def test_ceiling_benchmark_refuses_a_bad_size():
    command = [sys.executable, str(REPO / "bench" / "runtime_ceiling.py"), "--size", "12by4"]
    done = subprocess.run(command, check=False, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 2 and "WIDTHxHEIGHT" in done.stderr
