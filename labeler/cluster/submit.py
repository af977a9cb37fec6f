"""Submitting a ``labeler run`` job to a Ray cluster through the Ray Jobs API.

A submitted job is the same job as ``labeler run`` with the same job file and flags: its
entrypoint is ``python -m labeler run JOB.toml --address auto --no-progress [flags]``, run by the
cluster's job supervisor on the head node, so the driver joins the cluster it runs on. The
runtime environment carries:

* ``working_dir``: a folder holding only the job file (the job's working directory);
* ``py_modules``: this ``labeler`` package as source, so every node runs the submitter's code
  (``ship_code=False`` uses the version installed on the nodes instead, e.g. in the worker image);
* ``pip`` (optional): pinned requirements, for clusters whose nodes lack the dependencies;
* ``env_vars``: the non-secret settings of :data:`~labeler.runtime.ray_executor.FORWARDED_ENV`
  (``AWS_ENDPOINT_URL``, ``HF_HUB_OFFLINE``, ``LABELER_CACHE``, ...) when set here; the local
  folders among them (``LABELER_CACHE``, ``HF_HOME``) only to a cluster on this machine.
  Credentials are never forwarded, and URIs with embedded credentials are refused: the
  entrypoint and runtime environment are visible to everyone who can see the cluster's
  dashboard. Nodes get credentials from their own environment (instance role, Kubernetes
  secret).

Local paths in the job (input, output, embeddings, a model directory) are made absolute, since
the job runs in another working directory; they must name a filesystem that every node sees at
the same path (on a real cluster, use object storage).

Resubmitting is resuming. The submission id is derived from the job's fingerprint (its
output-changing settings, see :meth:`labeler.config.JobConfig.fingerprint`) and its output
location, so the same job is recognised: while a submission of it is pending or running nothing
new is submitted; once it has ended, the next submission gets the same id with a suffix (``-2``,
``-3``...) and ``labeler run`` resumes from the run folder at the output.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.metadata
import logging
import os
import re
import shlex
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO
from urllib.parse import urlsplit

import tomllib

from labeler import __version__
from labeler.config import JobConfig, build_config, load_job_file
from labeler.errors import UserError
from labeler.io.uris import redact_uri, split_uri_credentials
from labeler.runtime.ray_executor import FORWARDED_ENV

logger = logging.getLogger(__name__)

#: Submission ids of labeler jobs start with this.
ID_PREFIX = "labeler"
#: Job settings that name a location; local paths among them are made absolute.
LOCATION_KEYS = ("input", "output", "embeddings", "model")
#: Settings a submitted job does not take from the submitter: the job joins its own cluster.
NOT_FORWARDED = ("address",)
#: Settings that name folders of the submitting machine (see :func:`forwarded_env`).
LOCAL_PATH_SETTINGS = ("LABELER_CACHE", "HF_HOME")
#: Files of the package that are never shipped.
CODE_EXCLUDES = ["__pycache__", "*.pyc", "*.egg-info"]
#: Statuses after which a job cannot change any more.
TERMINAL = frozenset({"STOPPED", "SUCCEEDED", "FAILED"})
#: Seconds between status polls while waiting.
POLL_SECONDS = 2.0
#: Runtime-environment setup time allowed when ``pip`` packages must be installed.
PIP_SETUP_TIMEOUT_SECONDS = 1800


class JobsClient(Protocol):
    """The part of ``ray.job_submission.JobSubmissionClient`` this module uses."""

    def submit_job(self, **kwargs: Any) -> str: ...

    def list_jobs(self) -> list: ...

    def get_job_status(self, job_id: str) -> Any: ...

    def get_job_logs(self, job_id: str) -> str: ...

    def stop_job(self, job_id: str) -> bool: ...


@dataclass(frozen=True)
class JobSpec:
    """A job ready to submit.

    Attributes:
        config: the effective job, as the cluster will run it.
        entrypoint: the shell command the job supervisor runs.
        runtime_env: Ray runtime environment, without the ``working_dir`` (staged at submission).
        metadata: string labels stored with the job (fingerprint, output, labeler version).
        id_base: the submission id of the job's first submission.
        job_file: the job file shipped in the working directory, if any.
    """

    config: JobConfig
    entrypoint: str
    runtime_env: dict[str, Any]
    metadata: dict[str, str]
    id_base: str
    job_file: Path | None = None

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary (for ``--dry-run``); holds no secret by construction."""
        runtime_env = dict(self.runtime_env)
        if self.job_file is not None:
            runtime_env["working_dir"] = f"<folder with {self.job_file.name}>"
        return {"submission_id": self.id_base, "entrypoint": self.entrypoint,
                "runtime_env": runtime_env, "metadata": self.metadata}


@dataclass(frozen=True)
class Submission:
    """The outcome of :func:`submit_job`.

    Attributes:
        job_id: the submission id to follow (new, or the one already running the job).
        new: False when a submission of the same job was still pending or running and nothing
            was submitted.
        previous: earlier submissions of the same job on this cluster, oldest first.
    """

    job_id: str
    new: bool
    previous: tuple[str, ...] = ()


# --------------------------------------------------------------------------------------------
# Building the job
# --------------------------------------------------------------------------------------------


def absolute_location(value: str, cwd: Path, model: bool = False) -> str:
    """``value`` made absolute when it is a local path; URIs (and model names) unchanged.

    For ``model``, only values that look like a path (``./x``, ``/x``, ``~/x``) or name an
    existing local folder are paths; ``tiny`` and Hugging Face ids stay as they are.
    """
    if "://" in value or "::" in value:
        return value
    if model and not (value.startswith((".", "/", "~")) or (cwd / value).exists()):
        return value
    return os.path.abspath(cwd / Path(value).expanduser())


def _check_no_credentials(values: Mapping[str, Any]) -> None:
    for key in LOCATION_KEYS:
        value = values.get(key)
        if not isinstance(value, str) or "://" not in value:
            continue
        _, options = split_uri_credentials(value)
        if options and options != {"anon": True}:
            raise UserError(
                f"{key} {redact_uri(value)} embeds credentials; a submitted job's command line "
                "and files are visible to every user of the cluster. Give the cluster's nodes "
                "credentials through their environment (instance role, Kubernetes secret)."
            )


def resolve_job(
    job_file: str | Path | None, overrides: Mapping[str, Any], cwd: Path | None = None
) -> tuple[JobConfig, dict[str, Any]]:
    """The effective job and the flags to pass on the cluster.

    Args:
        job_file: a TOML job file, or None.
        overrides: ``labeler run`` settings given as flags (``None`` = not given).
        cwd: the folder relative paths are relative to (default: the current one).

    Returns:
        The job as the cluster will run it, and the flags (setting -> value) that produce it
        from the job file: the given flags plus every local path made absolute.

    Raises:
        ValueError: bad settings, or URIs with embedded credentials.
    """
    cwd = Path(cwd or os.getcwd())
    file_values = load_job_file(job_file) if job_file else {}
    flags = {key: value for key, value in overrides.items()
             if value is not None and key not in NOT_FORWARDED}
    merged = {**file_values, **flags}
    _check_no_credentials(merged)
    for key in LOCATION_KEYS:
        value = merged.get(key)
        if isinstance(value, str) and value:
            located = absolute_location(value, cwd, model=key == "model")
            if located != value or key in flags:
                flags[key] = located
    config = build_config({k: v for k, v in file_values.items() if k not in NOT_FORWARDED},
                          {**flags, "address": "auto"})
    return config, flags


def output_hash(config: JobConfig) -> str:
    """A short hash of the job's output location."""
    return hashlib.sha256(config.output.rstrip("/").encode()).hexdigest()[:8]


def submission_id_base(config: JobConfig, fingerprint: str | None = None) -> str:
    """``labeler-<fingerprint>-<output hash>``: the same for every submission of one job.
    ``fingerprint``: ``config.fingerprint()`` when the caller has it already (computing it reads
    the model folder's weights digest)."""
    return f"{ID_PREFIX}-{fingerprint or config.fingerprint()}-{output_hash(config)}"


def render_flags(flags: Mapping[str, Any]) -> list[str]:
    """``{"shard_size": 1, "overwrite": True}`` -> ``["--shard-size", "1", "--overwrite"]``."""
    args: list[str] = []
    for key, value in flags.items():
        option = "--" + key.replace("_", "-")
        if value is True:
            args.append(option)
        elif value is not False and value is not None:
            args += [option, str(value)]
    return args


def forwarded_env(environ: Mapping[str, str] | None = None,
                  local_cluster: bool = True) -> dict[str, str]:
    """The non-secret settings the job's processes get from the submitter's environment.

    Folders of this machine (:data:`LOCAL_PATH_SETTINGS`) are forwarded only to a cluster on
    this machine: on a remote cluster they would replace the nodes' own cache folders (the
    worker image points them at its cache volume) with paths that do not exist there.
    """
    environ = os.environ if environ is None else environ
    names = [name for name in FORWARDED_ENV
             if local_cluster or name not in LOCAL_PATH_SETTINGS]
    skipped = [name for name in LOCAL_PATH_SETTINGS if not local_cluster and environ.get(name)]
    if skipped:
        logger.info("not forwarding %s to a remote cluster (its nodes have their own)",
                    ", ".join(skipped))
    return {name: environ[name] for name in names if environ.get(name)}


def is_local_address(address: str | None) -> bool:
    """Whether a Jobs API address names this machine (``http://127.0.0.1:8265``)."""
    if not address:
        return False
    host = urlsplit(address if "://" in address else f"http://{address}").hostname or ""
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


def package_dir() -> Path:
    """The folder of the running ``labeler`` package (what ``py_modules`` ships)."""
    return Path(__file__).resolve().parents[1]


def build_job_spec(
    job_file: str | Path | None,
    overrides: Mapping[str, Any],
    *,
    ship_code: bool = True,
    pip: Iterable[str] | None = None,
    python: str = "python",
    cwd: Path | None = None,
    environ: Mapping[str, str] | None = None,
    local_cluster: bool = True,
) -> JobSpec:
    """Everything needed to submit ``labeler run [job_file] [flags]`` to a cluster.

    Args:
        job_file: a TOML job file (shipped in the working directory), or None.
        overrides: ``labeler run`` settings given as flags (``None`` = not given).
        ship_code: ship this ``labeler`` package as ``py_modules`` (False: use the nodes' own).
        pip: requirements to install on the nodes (e.g. :func:`pinned_requirements`).
        python: the interpreter that runs the entrypoint on the head node.
        cwd: the folder relative paths are relative to.
        environ: the environment to forward settings from (default ``os.environ``).
        local_cluster: the cluster runs on this machine (see :func:`forwarded_env`).

    Raises:
        ValueError: bad settings, or URIs with embedded credentials.
    """
    if not python or any(char.isspace() for char in python):
        raise UserError(f"python must be an executable name or path, got {python!r}")
    config, flags = resolve_job(job_file, overrides, cwd)
    command = [python, "-m", "labeler", "run"]
    path = Path(job_file) if job_file else None
    if path is not None:
        command.append(path.name)
    command += ["--address", "auto", "--no-progress", *render_flags(flags)]
    runtime_env: dict[str, Any] = {"env_vars": forwarded_env(environ, local_cluster)}
    if ship_code:
        runtime_env["py_modules"] = [str(package_dir())]
        runtime_env["excludes"] = list(CODE_EXCLUDES)
    packages = list(pip or [])
    if packages:
        runtime_env["pip"] = {"packages": packages, "pip_check": False}
        runtime_env["config"] = {"setup_timeout_seconds": PIP_SETUP_TIMEOUT_SECONDS}
    fingerprint = config.fingerprint()
    metadata = {
        "labeler_version": __version__,
        "labeler_fingerprint": fingerprint,
        "labeler_output": redact_uri(config.output),
        "labeler_output_hash": output_hash(config),
    }
    return JobSpec(config=config, entrypoint=shlex.join(command), runtime_env=runtime_env,
                   metadata=metadata, id_base=submission_id_base(config, fingerprint), job_file=path)


def declared_dependencies() -> list[str]:
    """labeler's runtime requirements: from the installed metadata, else ``pyproject.toml``."""
    try:
        requires = importlib.metadata.requires("labeler") or []
        return [spec for spec in requires if "extra ==" not in spec]
    except importlib.metadata.PackageNotFoundError:
        pass
    pyproject = package_dir().parent / "pyproject.toml"
    try:
        return list(tomllib.loads(pyproject.read_text())["project"]["dependencies"])
    except (OSError, KeyError, tomllib.TOMLDecodeError) as error:
        raise UserError(f"cannot find labeler's requirements (no metadata, {pyproject}: "
                         f"{error})") from error


_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?")


def pinned_requirements(requirements: Iterable[str] | None = None) -> list[str]:
    """Requirements pinned to the versions installed here (``ray[default]==2.60.0``).

    Local build labels are dropped (``torch==2.13.0``, not ``2.13.0+cpu``), so a GPU node gets
    the build for its platform. A requirement that is not installed here keeps its own spec.
    """
    pinned = []
    for spec in declared_dependencies() if requirements is None else requirements:
        spec = spec.split(";")[0].split("#")[0].strip()
        match = _REQUIREMENT.match(spec)
        if not match:
            continue
        name, extras = match.group(1), match.group(2) or ""
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pinned.append(spec)
            continue
        pinned.append(f"{name}{extras}=={version.split('+')[0]}")
    return pinned


def read_requirements(path: str | Path) -> list[str]:
    """The requirement lines of a requirements file (comments and blank lines dropped)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as error:
        raise UserError(f"cannot read requirements file {path}: {error}") from error
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


# --------------------------------------------------------------------------------------------
# Talking to the cluster
# --------------------------------------------------------------------------------------------


def connect(address: str | None) -> JobsClient:
    """A Jobs API client for the dashboard at ``address`` (``http://HEAD:8265``).

    Without an address, Ray's own lookup applies (``RAY_API_SERVER_ADDRESS``, ``RAY_ADDRESS``).
    A cluster with Ray's token authentication gets the token Ray would use
    (``RAY_AUTH_MODE=token``), or, with the mode unset, the local token (``RAY_AUTH_TOKEN``,
    ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``) once the cluster asks for one: Ray 2.60's
    client sends none then, although ``ray start --head`` enables authentication when that file
    exists. The token is never logged.

    Raises:
        RuntimeError: the dashboard cannot be reached, or refuses the credentials.
    """
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    where = redact_uri(address) if address else "$RAY_API_SERVER_ADDRESS / $RAY_ADDRESS"
    try:
        try:
            return JobSubmissionClient(address)
        except AuthenticationError:
            token = None if os.environ.get("RAY_AUTH_MODE") else local_auth_token()
            if token is None:
                raise
            logger.debug("the cluster requires a token: using the local one")
            return JobSubmissionClient(address, headers={"Authorization": f"Bearer {token}"})
    except ConnectionError as error:
        raise UserError(f"cannot reach the Ray Jobs API at {where}: {error}") from error
    except AuthenticationError as error:
        raise UserError(
            f"the Ray cluster at {where} requires an authentication token that was not found "
            "or not accepted: set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the cluster's "
            "token, as `ray get-auth-token` prints it on the head"
        ) from error


def local_auth_token(environ: Mapping[str, str] | None = None,
                     home: Path | None = None) -> str | None:
    """The Ray token available here: ``RAY_AUTH_TOKEN``, its file, or ``~/.ray/auth_token``."""
    environ = os.environ if environ is None else environ
    if environ.get("RAY_AUTH_TOKEN", "").strip():
        return environ["RAY_AUTH_TOKEN"].strip()
    candidates = []
    if environ.get("RAY_AUTH_TOKEN_PATH"):
        candidates.append(Path(environ["RAY_AUTH_TOKEN_PATH"]))
    candidates.append((home or Path.home()) / ".ray" / "auth_token")
    for path in candidates:
        try:
            token = path.read_text().strip()
        except OSError:
            continue
        if token:
            return token
    return None


def _status_name(status: Any) -> str:
    return str(getattr(status, "value", status))


def _suffix(job_id: str, base: str) -> int | None:
    """1 for ``base`` itself, N for ``base-N``, None for another job."""
    if job_id == base:
        return 1
    match = re.fullmatch(re.escape(base) + r"-(\d+)", job_id or "")
    return int(match.group(1)) if match else None


def submit_job(client: JobsClient, spec: JobSpec) -> Submission:
    """Submit ``spec``, unless a submission of the same job is still pending or running.

    Raises:
        ValueError: another job (other settings) is active on the same output.
    """
    jobs = client.list_jobs()
    same: list[tuple[int, Any]] = []
    for job in jobs:
        suffix = _suffix(getattr(job, "submission_id", None) or "", spec.id_base)
        if suffix is not None:
            same.append((suffix, job))
    same.sort(key=lambda pair: pair[0])
    previous = tuple(job.submission_id for _, job in same)
    for _, job in same:
        if _status_name(job.status) not in TERMINAL:
            logger.info("job %s is %s: not submitting the same job again", job.submission_id,
                        _status_name(job.status))
            return Submission(job.submission_id, new=False, previous=previous)
    for job in jobs:
        metadata = getattr(job, "metadata", None) or {}
        if (metadata.get("labeler_output_hash") == spec.metadata["labeler_output_hash"]
                and _status_name(job.status) not in TERMINAL):
            raise UserError(
                f"job {job.submission_id} ({_status_name(job.status)}) is writing the same output "
                f"{spec.metadata['labeler_output']} with other settings; stop it first "
                f"(labeler stop {job.submission_id})"
            )
    job_id = spec.id_base if not same else f"{spec.id_base}-{same[-1][0] + 1}"
    with _staged_working_dir(spec.job_file) as working_dir:
        runtime_env = dict(spec.runtime_env)
        if working_dir is not None:
            runtime_env["working_dir"] = working_dir
        submitted = client.submit_job(entrypoint=spec.entrypoint, submission_id=job_id,
                                      runtime_env=runtime_env, metadata=dict(spec.metadata))
    logger.info("submitted job %s (%s)", submitted,
                f"resumes {previous[-1]}" if previous else "new run")
    return Submission(submitted, new=True, previous=previous)


@contextlib.contextmanager
def _staged_working_dir(job_file: Path | None) -> Iterator[str | None]:
    """A temporary folder holding only the job file (Ray uploads it during ``submit_job``)."""
    if job_file is None:
        yield None
        return
    folder = Path(tempfile.mkdtemp(prefix="labeler-submit-"))
    try:
        shutil.copyfile(job_file, folder / job_file.name)
        yield str(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def job_status(client: JobsClient, job_id: str) -> str:
    """``PENDING``, ``RUNNING``, ``STOPPED``, ``SUCCEEDED`` or ``FAILED``."""
    return _status_name(client.get_job_status(job_id))


def wait_for_job(
    client: JobsClient,
    job_id: str,
    out: TextIO | None = None,
    timeout: float | None = None,
    poll_seconds: float | None = None,
) -> str:
    """Block until the job ends; stream its logs to ``out`` when given. Returns the status.

    Logs are followed through the Jobs API's log stream (``tail_job_logs``); where that is not
    available, the full log is polled and its new part written.

    Raises:
        TimeoutError: ``timeout`` seconds passed first.
    """
    poll_seconds = POLL_SECONDS if poll_seconds is None else poll_seconds
    deadline = None if timeout is None else time.monotonic() + timeout
    written = [0]  # characters of the log already written to ``out``
    streamed = False
    if out is not None and hasattr(client, "tail_job_logs"):
        try:
            asyncio.run(_stream_logs(client, job_id, out, deadline, written))
            streamed = True
        except TimeoutError:
            raise
        except Exception as error:  # noqa: BLE001 - no log stream (proxy, old server): poll
            logger.debug("log stream unavailable (%s); polling", error)
    while True:
        status = job_status(client, job_id)
        if out is not None and not streamed:
            logs = client.get_job_logs(job_id)
            if len(logs) > written[0]:
                out.write(logs[written[0]:])
                out.flush()
                written[0] = len(logs)
        if status in TERMINAL:
            return status
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {status} after {timeout:g} s")
        time.sleep(poll_seconds)


async def _stream_logs(client: Any, job_id: str, out: TextIO, deadline: float | None,
                       written: list[int]) -> None:
    async def stream() -> None:
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()
            written[0] += len(chunk)

    remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
    await asyncio.wait_for(stream(), remaining)


def stop_job(client: JobsClient, job_id: str) -> bool:
    """Ask the job to stop. Returns False when it was not running."""
    return bool(client.stop_job(job_id))


__all__ = [
    "JobSpec",
    "Submission",
    "build_job_spec",
    "connect",
    "forwarded_env",
    "is_local_address",
    "job_status",
    "local_auth_token",
    "output_hash",
    "pinned_requirements",
    "read_requirements",
    "resolve_job",
    "stop_job",
    "submission_id_base",
    "submit_job",
    "wait_for_job",
]
