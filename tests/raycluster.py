"""A real multi-node Ray cluster on 127.0.0.1 for tests: one ``ray start`` process per node.

Each node is started as ``ray start ... --block`` in its own process group, with its own
``--temp-dir`` and explicit free ports for every listening service, so two nodes (and other Ray
instances on the machine) never collide. The head runs the dashboard (the Jobs API).

Nothing is stopped by name (``ray stop`` would stop every Ray instance on the machine): a node is
stopped by killing, by PID, the processes of its ``ray start`` tree plus any process whose
command line names the node's private temp dir.

Token authentication: every process of the cluster (and every client the tests start) gets
``RAY_AUTH_MODE=token`` and a per-cluster ``RAY_AUTH_TOKEN`` from :attr:`LocalRayCluster.env`, so
the cluster does not depend on ``~/.ray/auth_token`` or on other clusters on the machine.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil

logger = logging.getLogger(__name__)

#: Seconds a node may take to register with the cluster.
START_TIMEOUT = 90.0
#: Not inherited by the nodes: another cluster's address, and this checkout's source (nodes get
#: the package the way a real cluster does, from the job's runtime environment).
DROPPED_ENV = ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH", "PYTHONPATH")
#: GCS health checks on the head: a killed node is declared dead after a few seconds, not ~30.
FAST_HEALTH_CHECKS = {"health_check_period_ms": 1000, "health_check_timeout_ms": 2000,
                      "health_check_failure_threshold": 5}


class RayClusterError(RuntimeError):
    """The local test cluster could not be started."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RayNode:
    """One ``ray start --block`` process and what identifies its daemons."""

    name: str
    temp_dir: Path
    process: subprocess.Popen
    log_path: Path
    seen: dict[int, psutil.Process] = field(default_factory=dict)

    def processes(self) -> list[psutil.Process]:
        """Live processes of this node: the ``ray start`` tree and anything naming its temp dir."""
        found: dict[int, psutil.Process] = {}
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(self.process.pid)
            found[root.pid] = root
            for child in root.children(recursive=True):
                found[child.pid] = child
        marker = str(self.temp_dir)
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                if any(marker in part for part in proc.info["cmdline"] or ()):
                    found[proc.pid] = proc
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        for pid, proc in found.items():
            self.seen.setdefault(pid, proc)
        return [proc for proc in found.values() if proc.is_running()]

    def kill(self) -> int:
        """SIGKILL every process of the node (a lost machine). Returns how many were killed."""
        procs = self.processes()
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGKILL)
        psutil.wait_procs(procs, timeout=10)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        return len(procs)


class LocalRayCluster:
    """A head (with dashboard) and worker nodes on 127.0.0.1, each a separate ``ray start``.

    Args:
        root: a short folder for the nodes' temp dirs (unix socket paths must stay < 108 bytes).
        env: extra environment for every node (inherits ``os.environ``).
    """

    def __init__(self, root: Path, env: dict[str, str] | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.ray = str(Path(sys.executable).parent / "ray")
        token = secrets.token_hex(32)
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        self.env = {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": token,
            # "1" allows several nodes on one machine (with "0" the head refuses to be joined).
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1",
            "RAY_USAGE_STATS_ENABLED": "0",
            "PATH": path,
            **(env or {}),
        }
        self.nodes: dict[str, RayNode] = {}
        self.gcs_port = free_port()
        self.dashboard_port = free_port()

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def process_env(self) -> dict[str, str]:
        """``os.environ`` plus the cluster's settings: for nodes and for clients."""
        env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
        return {**env, **self.env}

    def _start(self, name: str, args: list[str]) -> RayNode:
        temp_dir = self.root / name
        temp_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.root / f"{name}.log"
        ports = [
            "--node-ip-address", "127.0.0.1",
            "--node-manager-port", str(free_port()),
            "--object-manager-port", str(free_port()),
            "--dashboard-agent-listen-port", str(free_port()),
            "--dashboard-agent-grpc-port", str(free_port()),
            "--runtime-env-agent-port", str(free_port()),
            "--metrics-export-port", str(free_port()),
        ]
        command = [self.ray, "start", *args, *ports, "--temp-dir", str(temp_dir),
                   "--disable-usage-stats", "--block"]
        logger.info("starting ray node %s: %s", name, " ".join(command))
        with open(log_path, "wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                       env=self.process_env(), start_new_session=True,
                                       cwd=self.root)
        node = RayNode(name, temp_dir, process, log_path)
        self.nodes[name] = node
        return node

    def start_head(self, num_cpus: int = 1, system_config: dict | None = None) -> RayNode:
        """Start the head node with the dashboard and wait until the Jobs API answers."""
        args = [
            "--head", "--port", str(self.gcs_port),
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
            "--include-dashboard=true", "--ray-client-server-port", str(free_port()),
            "--num-cpus", str(num_cpus), "--num-gpus", "0",
        ]
        if system_config:
            args += ["--system-config", json.dumps(system_config)]
        node = self._start("head", args)
        self._wait(lambda: self._dashboard_up(), node, "the dashboard")
        self._wait(lambda: self.alive_nodes() >= 1, node, "the head node")
        return node

    def add_node(self, name: str, num_cpus: int = 1, resources: dict | None = None) -> RayNode:
        """Start a worker node that joins the head; wait until the cluster counts it."""
        before = self.alive_nodes()
        args = ["--address", self.gcs_address, "--num-cpus", str(num_cpus), "--num-gpus", "0"]
        if resources:
            args += ["--resources", json.dumps(resources)]
        node = self._start(name, args)
        self._wait(lambda: self.alive_nodes() > before, node, f"node {name}")
        return node

    def api(self, path: str, timeout: float = 5) -> dict:
        """GET a dashboard endpoint (with the cluster's token) and decode its JSON."""
        request = urllib.request.Request(f"{self.dashboard_url}{path}")
        request.add_header("Authorization", f"Bearer {self.env['RAY_AUTH_TOKEN']}")
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.load(response)

    def _dashboard_up(self) -> bool:
        try:
            self.api("/api/version", timeout=2)
        except (urllib.error.URLError, OSError, ValueError):
            return False
        return True

    def alive_nodes(self) -> int:
        """Nodes the head counts as alive."""
        try:
            summary = self.api("/nodes?view=summary")["data"]["summary"]
        except (urllib.error.URLError, OSError, KeyError, ValueError):
            return 0
        return sum(1 for node in summary if node.get("raylet", {}).get("state") == "ALIVE")

    def _wait(self, condition, node: RayNode, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if condition():
                return
            if node.process.poll() is not None:
                raise RayClusterError(f"ray start for {node.name} exited:\n{self.log_tail(node)}")
            time.sleep(0.5)
        raise RayClusterError(f"{what} did not come up in {START_TIMEOUT:.0f} s:\n"
                              f"{self.log_tail(node)}")

    @staticmethod
    def log_tail(node: RayNode, lines: int = 40) -> str:
        try:
            return "\n".join(node.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Kill every node's processes by PID (workers first, head last)."""
        for name in sorted(self.nodes, key=lambda n: n == "head"):
            node = self.nodes[name]
            with contextlib.suppress(Exception):
                node.kill()
        # Processes seen earlier that outlived their parent (psutil refuses reused PIDs).
        leftovers = [proc for node in self.nodes.values() for proc in node.seen.values()]
        for proc in leftovers:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                proc.send_signal(signal.SIGKILL)
        psutil.wait_procs(leftovers, timeout=10)
