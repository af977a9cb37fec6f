"""``labeler submit`` against a real two-node Ray cluster on 127.0.0.1.

The cluster is two ``ray start`` processes (a head with the dashboard, and a second node), see
:mod:`tests.raycluster`. Every command runs as a subprocess, the way a user runs it; the nodes do
not have this checkout on their ``PYTHONPATH``, so jobs run the code ``labeler submit`` ships.
Outputs are compared with a local ``labeler run`` of the same job file.

Slow (about 3-4 minutes on 2 cores): ``pytest -m slow tests/test_submit_cluster.py``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.raycluster import FAST_HEALTH_CHECKS, LocalRayCluster, RayClusterError

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "labeler" / "data" / "samples"
JOB_FILE = """\
method = "diffseg"
model = "tiny"
batch_size = 1
shard_size = 1
workers = 2

[diffseg]
kl_threshold = 0.7
"""
N_IMAGES = 8  # the 4 sample photos, twice


def labeler(*args: str, env: dict, timeout: float = 600,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the ``labeler`` command line of this checkout."""
    return subprocess.run([sys.executable, "-m", "labeler", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, check=False)


def done_markers(output: Path) -> list[str]:
    folder = output / "run" / "done"
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.iterdir() if ".tmp-" not in p.name)


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def assert_same_output(expected: Path, actual: Path) -> None:
    """Same COCO file (but the creation date), same images table, same annotations."""
    coco_a = json.loads((expected / "coco.json").read_text())
    coco_b = json.loads((actual / "coco.json").read_text())
    for key in ("images", "annotations", "categories"):
        assert coco_a[key] == coco_b[key], key
    assert coco_a["info"]["run_id"] == coco_b["info"]["run_id"]
    assert len(coco_a["images"]) == N_IMAGES and coco_a["annotations"]
    images = [pq.read_table(folder / "images.parquet") for folder in (expected, actual)]
    assert images[0].equals(images[1])

    def annotations(folder: Path) -> list[dict]:
        rows = pq.read_table(folder / "annotations").to_pylist()
        return sorted(rows, key=lambda row: row["id"])

    assert annotations(expected) == annotations(actual)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A collection of the sample photos (absolute path) and the job file."""
    root = tmp_path_factory.mktemp("submit")
    for copy in ("a", "b"):
        shutil.copytree(SAMPLES, root / "photos" / copy, ignore=shutil.ignore_patterns("*.md"))
    (root / "job.toml").write_text(f'input = "{root / "photos"}"\n' + JOB_FILE)
    return root


@pytest.fixture(scope="module")
def client_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    return env


@pytest.fixture(scope="module")
def reference(workspace, client_env) -> Path:
    """The same job run locally with ``labeler run`` (before the cluster starts)."""
    output = workspace / "reference"
    result = labeler("run", str(workspace / "job.toml"), "--output", str(output),
                     "--no-progress", env=client_env, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return output


@pytest.fixture(scope="module")
def cluster(reference, client_env) -> LocalRayCluster:
    """A head (1 CPU, dashboard) and a second node (1 CPU) on 127.0.0.1."""
    root = Path(f"/tmp/lbl-rc-{os.getpid()}")  # short: unix socket paths are limited to 107 bytes
    shutil.rmtree(root, ignore_errors=True)
    cluster = LocalRayCluster(root, env={"LABELER_CACHE": os.environ["LABELER_CACHE"],
                                         "HF_HUB_OFFLINE": "1"})
    try:
        cluster.start_head(num_cpus=1, system_config=FAST_HEALTH_CHECKS)
        cluster.add_node("node2", num_cpus=1, resources={"node2": 1})
    except RayClusterError as error:
        cluster.stop()
        pytest.fail(str(error), pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def env(cluster, client_env) -> dict:
    """Environment for ``labeler`` client commands: the cluster's token, this checkout."""
    return {**cluster.process_env(), **{k: client_env[k] for k in ("PYTHONPATH", "HF_HUB_OFFLINE")}}


def submit(workspace: Path, output: Path, cluster: LocalRayCluster, env: dict,
           *extra: str) -> subprocess.CompletedProcess:
    return labeler("submit", "job.toml", "--output", str(output), "--address",
                   cluster.dashboard_url, *extra, env=env, cwd=workspace)


def job_info(cluster: LocalRayCluster, job_id: str) -> dict:
    """The Jobs API's record of a job (entrypoint, runtime_env, metadata, status)."""
    return cluster.api(f"/api/jobs/{job_id}")


def test_submitted_job_completes_with_the_output_of_a_local_run(workspace, reference, cluster, env):
    output = workspace / "out-submit"
    result = submit(workspace, output, cluster, env, "--wait")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    job_id = result.stdout.splitlines()[0]
    assert job_id.startswith("labeler-") and f"job {job_id} SUCCEEDED" in result.stdout
    assert f"{N_IMAGES} images: {N_IMAGES} labeled" in result.stdout  # the streamed job log
    assert_same_output(reference, output)
    info = job_info(cluster, job_id)
    assert info["runtime_env"]["py_modules"][0].startswith("gcs://")  # this checkout, shipped
    assert info["runtime_env"]["env_vars"]["HF_HUB_OFFLINE"] == "1"
    assert info["metadata"]["labeler_output"] == str(output)
    assert info["entrypoint"].startswith("python -m labeler run job.toml --address auto")
    logs = labeler("logs", job_id, "--address", cluster.dashboard_url, env=env)
    assert logs.returncode == 0 and f"{N_IMAGES} labeled" in logs.stdout
    # RAY_AUTH_MODE unset (Ray's client then sends no token): the local token is used on demand
    unset_mode = {k: v for k, v in env.items() if k != "RAY_AUTH_MODE"}
    logs = labeler("logs", job_id, "--address", cluster.dashboard_url, env=unset_mode)
    assert logs.returncode == 0 and f"{N_IMAGES} labeled" in logs.stdout
    wrong_token = {**unset_mode, "RAY_AUTH_TOKEN": "0" * 64}
    refused = labeler("logs", job_id, "--address", cluster.dashboard_url, env=wrong_token)
    assert refused.returncode == 2 and "authentication token" in refused.stderr
    assert "0" * 64 not in refused.stderr + refused.stdout


def test_running_job_is_not_submitted_twice_and_a_stopped_job_resumes(
    workspace, reference, cluster, env
):
    output = workspace / "out-stop"
    first = submit(workspace, output, cluster, env)
    assert first.returncode == 0, first.stderr
    job_id = first.stdout.strip()
    again = submit(workspace, output, cluster, env)
    assert again.returncode == 0 and again.stdout.strip() == job_id
    assert "already running" in again.stderr

    wait_for(lambda: len(done_markers(output)) >= 1, 300, "the first shard")
    stop = labeler("stop", job_id, "--address", cluster.dashboard_url, "--wait", env=env)
    assert stop.returncode == 0 and f"{job_id} STOPPED" in stop.stdout, stop.stdout + stop.stderr
    done_before = len(done_markers(output))
    assert done_before < N_IMAGES, "stopped too late to test resuming"

    resumed = submit(workspace, output, cluster, env, "--wait")
    assert resumed.returncode == 0, resumed.stdout[-4000:] + resumed.stderr[-4000:]
    assert resumed.stdout.splitlines()[0] == f"{job_id}-2"
    assert "resuming:" in resumed.stdout  # labeler run found the earlier run folder
    processed = N_IMAGES - done_before
    assert f"{processed} of {N_IMAGES} shards processed" in resumed.stdout
    assert_same_output(reference, output)


def test_job_survives_the_loss_of_a_node(workspace, reference, cluster, env):
    output = workspace / "out-node-loss"
    node2 = cluster.nodes["node2"]
    result = submit(workspace, output, cluster, env)
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()

    def worker_ready_on_node2() -> bool:
        logs = cluster.api(f"/api/jobs/{job_id}/logs")["logs"]
        pids = {int(pid) for pid in re.findall(r"worker \d+ ready: pid (\d+)", logs)}
        return bool(pids & {proc.pid for proc in node2.processes()})

    # Lose the node as soon as its worker is ready: the driver feeds a ready worker at once, and
    # with at most N - 3 shards done then (checked below), at least one was still pending, so
    # the worker on node2 holds work when the node goes.
    wait_for(worker_ready_on_node2, 300, "a ready worker on node2")
    done_at_loss = len(done_markers(output))
    killed = node2.kill()
    assert killed >= 3  # ray start, raylet, agents, and the worker on it
    assert done_at_loss <= N_IMAGES - 3, "node2 came up too late to be given work"

    follow = labeler("logs", job_id, "--follow", "--address", cluster.dashboard_url, env=env,
                     timeout=600)
    assert follow.returncode == 0, follow.stdout[-4000:] + follow.stderr[-4000:]
    assert f"job {job_id} SUCCEEDED" in follow.stdout
    assert f"{N_IMAGES} images: {N_IMAGES} labeled, 0 failed" in follow.stdout
    assert re.search(r"\b1 worker restarts, [1-9]\d* shard retries", follow.stdout), follow.stdout
    wait_for(lambda: cluster.alive_nodes() == 1, 60, "node2 to be marked dead")
    assert_same_output(reference, output)
