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


def test_cpu_smoke_runs_every_step_into_one_json(tmp_path):
    """CI runs the suite's CPU dry run so no step can rot: every step passes and prints the
    figures the GPU run will be read for."""
    out = tmp_path / "suite.json"
    done = subprocess.run(["bash", str(SUITE), "--cpu-smoke", "--out", str(out)],
                          capture_output=True, text=True, env=_env(), check=False)
    assert out.exists(), done.stderr[-3000:]
    suite = json.loads(out.read_text())
    assert done.returncode == 0, json.dumps(suite, indent=1)[-6000:]
    assert set(suite["steps"]) == {"diffseg_compile_off", "slime_compile_off", "diffseg_post_random",
                                   "diffseg_post_world", "diffews", "ceiling", "pool", "pytest_gpu"}
    for step in suite["steps"].values():
        assert step["status"] == "passed" and len(step["load_average_before"]) == 3
    diffseg = suite["steps"]["diffseg_compile_off"]
    assert [row["batch_size"] for row in diffseg["figures"]["sweep"]] == [1, 2]
    assert [line.get("batch_size") for line in diffseg["lines"]] == [1, 2, None]  # as they came
    assert all(row["first_batch_s"] > 0 and row["cpu_s_per_image"] > 0
               for row in diffseg["figures"]["sweep"])
    world = suite["steps"]["diffseg_post_world"]["figures"]
    random = suite["steps"]["diffseg_post_random"]["figures"]
    assert world["proposals_mean"] > random["proposals_mean"]  # regions, not uniform attention
    slime = suite["steps"]["slime_compile_off"]["figures"][0]
    assert [row["patch_batch"] for row in slime["infer_sweep"]] == [1, 4]
    assert slime["fit_first_step_s"] > 0 and slime["first_image_s"] > 0
    ceiling = suite["steps"]["ceiling"]["figures"]
    assert ceiling["model_ms_per_image"] == 5 and ceiling["distinct"] == 64
    assert ceiling["images"] == 64 and "process_total" in ceiling["cpu_ms_per_image"]
    assert ceiling["host_ms_per_image_with_accelerator"] > 0
    pool = suite["steps"]["pool"]["figures"]["rows"]
    assert [(row["pool"], row["workers"]) for row in pool] == [
        ("threads", 1), ("threads", 2), ("processes", 1), ("processes", 2)]
    diffews = suite["steps"]["diffews"]["figures"]
    assert [(row["shots"], row["mode"]) for row in diffews["rows"]] == [(1, "uncached"),
                                                                         (1, "cached")]
    assert [row["rows_per_query"]["unet"] for row in diffews["rows"]] == [2, 1]
    assert suite["steps"]["pytest_gpu"]["figures"]["tests"] >= 1


def test_a_step_cut_short_keeps_the_lines_it_printed(tmp_path):
    """The report keeps every JSON line a timed-out step printed, and says it timed out."""
    (tmp_path / "slow.log").write_text('starting\n{"batch_size": 1, "s": 2.0}\n{"batch_si')
    (tmp_path / "slow.status").write_text("124 100 1.0 2.0 3.0 1.5 2.5 3.5\n")
    (tmp_path / "quick.log").write_text('{"a": 1}\n{"a": 2}\n')
    (tmp_path / "quick.status").write_text("0 3 1 1 1 1 1 1\n")
    out = tmp_path / "suite.json"
    done = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_suite_report.py"),
                           str(tmp_path), str(out), "1"], capture_output=True, text=True,
                          env=_env(), check=False)
    assert done.returncode == 1
    suite = json.loads(out.read_text())
    slow, quick = suite["steps"]["slow"], suite["steps"]["quick"]
    assert slow["status"] == "timeout" and slow["lines"] == [{"batch_size": 1, "s": 2.0}]
    assert slow["load_average_after"] == [1.5, 2.5, 3.5] and "log_tail" in slow
    assert quick["status"] == "passed" and quick["figures"] == {"a": 2}


def test_a_wheelhouse_that_cannot_provide_the_packages_stops_the_suite(tmp_path):
    (tmp_path / "wheels").mkdir()
    done = subprocess.run(["bash", str(SUITE), "--cpu-smoke", "--wheelhouse", str(tmp_path / "wheels"),
                           "--out", str(tmp_path / "suite.json")], capture_output=True, text=True,
                          env=_env(), check=False)
    assert done.returncode == 2 and "installing from" in done.stderr
    assert not (tmp_path / "suite.json").exists()
