"""bench/gpu_suite.sh: refuses clearly without CUDA; its CPU dry run runs every step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SUITE = REPO / "bench" / "gpu_suite.sh"


def _env() -> dict:
    return {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(REPO)}


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_the_suite_says_so_and_writes_nothing(tmp_path):
    out = tmp_path / "suite.json"
    done = subprocess.run(["bash", str(SUITE), "--out", str(out)], capture_output=True, text=True,
                          env=_env(), check=False)
    assert done.returncode == 2
    assert "no CUDA device" in done.stderr and "--cpu-smoke" in done.stderr
    assert not out.exists()


def test_an_unknown_argument_is_refused():
    done = subprocess.run(["bash", str(SUITE), "--fast"], capture_output=True, text=True,
                          env=_env(), check=False)
    assert done.returncode == 2 and "unknown argument --fast" in done.stderr


@pytest.mark.slow
def test_cpu_smoke_runs_every_step_into_one_json(tmp_path):
    out = tmp_path / "suite.json"
    done = subprocess.run(["bash", str(SUITE), "--cpu-smoke", "--out", str(out)],
                          capture_output=True, text=True, env=_env(), check=False)
    suite = json.loads(out.read_text())
    assert done.returncode == 0, suite
    assert set(suite["steps"]) == {"diffseg_compile_off", "slime_compile_off", "diffews", "ceiling",
                                   "pytest_gpu"}
    assert all(step["status"] == "passed" for step in suite["steps"].values())
    sweep = suite["steps"]["diffseg_compile_off"]["figures"]["sweep"]
    assert [row["batch_size"] for row in sweep] == [1, 2]
    slime = suite["steps"]["slime_compile_off"]["figures"][0]
    assert [row["patch_batch"] for row in slime["infer_sweep"]] == [1, 4]
    assert suite["steps"]["ceiling"]["figures"]["model_ms_per_image"] == 5
    diffews = suite["steps"]["diffews"]["figures"]
    assert [(row["shots"], row["mode"]) for row in diffews["rows"]] == [
        (1, "uncached"), (1, "cached"), (2, "cached"), (2, "uncached")]
    assert [row["rows_per_query"]["unet"] for row in diffews["rows"]] == [2, 1, 1, 3]
    assert diffews["rows"][2]["bank_mib_per_shot"] == diffews["rows"][0]["bank_mib_per_shot"]
