"""Running a job's shards on Ray actors: the only module of the library that imports ray.

Each :class:`LabelWorker` actor holds one :class:`labeler.runtime.worker.ShardWorker` (the model
and the method, loaded once; one GPU per actor by default, fractions allowed; CPU actors when
there is no GPU) and runs :data:`~labeler.runtime.executor.SHARDS_IN_FLIGHT_PER_WORKER` calls at
once (threads): the next shard reads ahead while the current one is on the model. The driver loop
is :class:`labeler.runtime.executor.Driver`; this module adds what is Ray's: the session, the
placement of the actors, and telling a shard's own error (``RayTaskError``: an application
error) from a dead actor, a lost node or object (a system failure: the actor is replaced and its
shards requeued, bounded per shard so a poison shard cannot loop).

Without an address, a local Ray instance is started on 127.0.0.1 (no dashboard) and shut down at
the end; with ``--address`` the driver joins that cluster. When Ray is already initialised in this
process (a notebook, the tests), that session is used and left running.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labeler.config import JobConfig
from labeler.errors import UserError
from labeler.io.uris import redact_uri
from labeler.runtime.executor import (
    SHARDS_IN_FLIGHT_PER_WORKER,
    Driver,
    ExecutionReport,
    Outcome,
    ShardEvents,
)
from labeler.runtime.postprocess import default_postprocess_threads
from labeler.runtime.run_folder import RunFolder
from labeler.runtime.scheduler import WorkersCannotStartError
from labeler.runtime.worker import ShardWorker

if TYPE_CHECKING:
    from typing_extensions import Self

logger = logging.getLogger(__name__)

#: Ray's logger that announces token authentication on a local instance's start.
RAY_TOKEN_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"
#: Object store of the local instance: only small stats travel through it.
LOCAL_OBJECT_STORE_BYTES = 512 * 1024**2
#: Environment the workers need that is not a secret. Credentials are never forwarded: on a local
#: instance workers inherit the driver's environment; a cluster's nodes bring their own.
FORWARDED_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_RESPONSE_CHECKSUM_VALIDATION",
    "AWS_REQUEST_CHECKSUM_CALCULATION",
    "HF_HUB_OFFLINE",
    "HF_HOME",
    "HF_ENDPOINT",
    "LABELER_CACHE",
    "LABELER_METHODS",  # method plug-ins (see labeler.methods.registry)
)


@dataclass(frozen=True)
class Placement:
    """How many workers, and what each one reserves."""

    workers: int
    num_gpus: float
    num_cpus: float
    #: post-processing threads of each worker (see :mod:`labeler.runtime.postprocess`)
    postprocess_threads: int = 1


# --------------------------------------------------------------------------------------------
# The worker
# --------------------------------------------------------------------------------------------


class LabelWorker(ShardWorker):
    """The Ray actor: a :class:`~labeler.runtime.worker.ShardWorker` in a worker process."""

    def __init__(self, config: JobConfig, run_id: str, storage_options: dict | None = None,
                 postprocess_threads: int = 1) -> None:
        logging.getLogger("labeler").setLevel(logging.INFO)  # per-shard logs keep INFO records
        super().__init__(config, run_id, storage_options, postprocess_threads, publish_life=True)


# --------------------------------------------------------------------------------------------
# The Ray session
# --------------------------------------------------------------------------------------------


def _import_ray(local: bool):
    """Import ray; for a local instance, bind it to the loopback interface first."""
    if local:
        # Read when ray is imported: the node's address becomes 127.0.0.1, not the LAN address.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    return ray


class RaySession:
    """Joins ``address``, reuses an initialised session, or starts (and later stops) a local one."""

    def __init__(self, address: str | None) -> None:
        self.address = address
        self.ray = _import_ray(local=address is None)
        self.started = False
        self.local = address is None

    def __enter__(self) -> Self:
        ray = self.ray
        if ray.is_initialized():
            logger.info("using the Ray session already initialised in this process")
            self.local = _is_local_session(ray)
            return self
        common = {"include_dashboard": False, "log_to_driver": False,
                  "logging_level": logging.WARNING}
        if self.address is None:
            # A local instance turns on token auth by itself and says so on every start; the
            # notice tells a labeler user nothing (the instance listens on 127.0.0.1 only).
            logging.getLogger(RAY_TOKEN_NOTICE_LOGGER).setLevel(logging.ERROR)
            ray.init(address="local", num_cpus=os.cpu_count() or 1,
                     object_store_memory=LOCAL_OBJECT_STORE_BYTES, **common)
            logger.info("started a local Ray instance on 127.0.0.1")
        else:
            ray.init(address=self.address, **common)
            logger.info("joined the Ray cluster at %s", redact_uri(self.address))
        self.started = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.started:
            self.ray.shutdown()

    def resources(self) -> dict[str, float]:
        return dict(self.ray.cluster_resources())

    def worker_env(self) -> dict[str, str]:
        """Environment for the workers: non-secret settings; the code's location when local."""
        env = {name: os.environ[name] for name in FORWARDED_ENV if os.environ.get(name)}
        if self.local:
            # Workers must import the driver's copy of labeler (not another installed one).
            root = str(Path(__file__).resolve().parents[2])
            env["PYTHONPATH"] = os.pathsep.join(
                part for part in (root, os.environ.get("PYTHONPATH", "")) if part
            )
        return env


def _is_local_session(ray) -> bool:
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    return len(nodes) == 1 and nodes[0].get("NodeManagerAddress") in ("127.0.0.1", _own_address())


def _own_address() -> str:
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def plan_placement(config: JobConfig, resources: dict[str, float], local: bool) -> Placement:
    """Workers and their reservations for ``config`` on a cluster with ``resources``.

    GPU workers (``gpus_per_worker``, default 1) when the cluster has GPUs and the job does not
    ask for the CPU; otherwise CPU workers (default: one worker). Each worker reserves
    ``cpus_per_worker`` CPUs and runs that many post-processing threads; by default a GPU worker
    gets its share of the cluster's CPUs per GPU, a CPU worker one CPU (its model's thread plus
    one post-processing thread). On a local instance, asking for more than the machine has is an
    error rather than a wait.

    Raises:
        ValueError: a setting that cannot be satisfied.
    """
    gpus = float(resources.get("GPU", 0.0))
    cpus = float(resources.get("CPU", 1.0))
    if config.workers is not None and config.workers < 1:
        raise UserError("--workers must be >= 1")
    per_gpu = config.gpus_per_worker
    if per_gpu is not None and per_gpu < 0:
        raise UserError("--gpus-per-worker must be >= 0")
    per_cpu = config.cpus_per_worker
    on_cpu = (config.device or "").startswith("cpu") or per_gpu == 0
    if not on_cpu and (gpus > 0 or per_gpu):
        per_gpu = per_gpu or 1.0
        capacity = int(gpus / per_gpu + 1e-9)
        workers = config.workers or max(capacity, 1)
        if local and workers > capacity:
            raise UserError(
                f"{workers} workers with {per_gpu:g} GPU each need {workers * per_gpu:g} GPUs; "
                f"this machine has {gpus:g} (use --gpus-per-worker 0 for CPU workers)"
            )
        # A worker's share of the CPUs: CPUs per GPU times its GPUs.
        threads = default_postprocess_threads(per_cpu, int(cpus * per_gpu), gpus, gpu_worker=True)
        return Placement(workers=workers, num_gpus=per_gpu, num_cpus=float(threads),
                         postprocess_threads=threads)
    workers = config.workers or 1
    threads = default_postprocess_threads(per_cpu, int(cpus), gpus, gpu_worker=False)
    if local and workers * threads > cpus:
        raise UserError(f"{workers} CPU workers need {workers * threads} CPUs ({threads} each); "
                         f"this machine has {cpus:g}")
    return Placement(workers=workers, num_gpus=0.0, num_cpus=float(threads),
                     postprocess_threads=threads)


# --------------------------------------------------------------------------------------------
# The executor
# --------------------------------------------------------------------------------------------


def execute_shards(config: JobConfig, run: RunFolder, shard_ids: list[str], run_id: str,
                   events: ShardEvents | None = None,
                   storage_options: dict | None = None,
                   read_uris: dict[str, str] | None = None) -> ExecutionReport:
    """Process ``shard_ids`` on Ray workers; write completion markers and failure records.

    Raises:
        StorageFaultError: a worker met a disk fault (full, over quota, read-only, no
            permission): the run stops at once rather than failing every shard the same way.
        WorkersCannotStartError: workers keep dying before they are ready.
        ValueError: the placement cannot be satisfied.
    """
    with RaySession(config.address) as session:
        placement = plan_placement(config, session.resources(), session.local)
        if not session.local and run.output.is_local:
            logger.warning("output %s is a local path: workers on other nodes cannot write it",
                           run.output.uri)
        actor_class = session.ray.remote(LabelWorker).options(
            num_gpus=placement.num_gpus,
            num_cpus=placement.num_cpus,
            max_restarts=0,
            max_task_retries=0,
            max_concurrency=SHARDS_IN_FLIGHT_PER_WORKER,
            runtime_env={"env_vars": session.worker_env()},
        )
        make_worker = lambda: actor_class.remote(config, run_id, storage_options,
                                                 placement.postprocess_threads)
        logger.info("%d workers (%g GPU, %g CPU, %d post-processing threads each) for %d shards",
                    placement.workers, placement.num_gpus, placement.num_cpus,
                    placement.postprocess_threads, len(shard_ids))
        driver = Driver(RayWorkers(session.ray, make_worker), placement.workers, run, shard_ids,
                        events or ShardEvents(), stall_timeout=config.stall_timeout,
                        read_uris=read_uris)
        return driver.run()


class RayWorkers:
    """Workers as Ray actors (see :class:`labeler.runtime.executor.Workers`); calls are refs.

    Args:
        ray: the ``ray`` module (or a stand-in with ``wait``, ``get``, ``kill``, ``exceptions``).
        make_worker: starts one actor.
    """

    def __init__(self, ray, make_worker: Callable[[], Any]) -> None:
        self.ray = ray
        self.make_worker = make_worker

    def start(self) -> Any:
        return self.make_worker()

    def ready(self, handle: Any) -> Any:
        return handle.ready.remote()

    def process(self, handle: Any, output_uri: str, shard_id: str, attempt: int,
                read_uris: dict[str, str]) -> Any:
        return handle.process.remote(output_uri, shard_id, attempt, read_uris)

    def wait(self, calls: list, timeout: float) -> list:
        ready, _ = self.ray.wait(calls, num_returns=1, timeout=timeout)
        return ready

    def outcome(self, call: Any) -> Outcome:
        """A ``RayTaskError`` is the shard's own error; any other ``RayError`` a lost worker."""
        try:
            return Outcome(value=self.ray.get(call))
        except self.ray.exceptions.RayTaskError as error:
            return Outcome(raised=getattr(error, "cause", None) or error, text=str(error))
        except self.ray.exceptions.RayError as error:
            return Outcome(text=f"{type(error).__name__}: {error}", lost=True)

    def kill(self, handle: Any) -> None:
        self.ray.kill(handle, no_restart=True)


__all__ = [
    "LabelWorker",
    "Placement",
    "RaySession",
    "RayWorkers",
    "WorkersCannotStartError",
    "execute_shards",
    "plan_placement",
]
