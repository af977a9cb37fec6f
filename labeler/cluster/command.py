"""``labeler submit``, ``labeler logs`` and ``labeler stop``: jobs on a Ray cluster.

Usage::

    labeler submit [JOB.toml] --address http://HEAD:8265 [labeler run flags]
                   [--wait] [--pip | --requirements FILE] [--no-ship-code] [--python EXE]
                   [--dry-run]
    labeler logs JOB_ID --address http://HEAD:8265 [--follow]
    labeler stop JOB_ID --address http://HEAD:8265 [--wait]

``submit`` takes every ``labeler run`` setting as a flag (derived from
:class:`labeler.config.JobConfig`, so the two never drift apart) and prints the job id on
stdout; ``--wait`` then streams the job's log and exits with 0 only when the job succeeded.
Without ``--address`` Ray's own lookup applies (``RAY_API_SERVER_ADDRESS``, then
``RAY_ADDRESS``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from labeler.config import JobConfig
from labeler.methods.registry import method_flags, methods

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_INTERRUPTED = 130

ADDRESS_HELP = "the cluster's dashboard (Jobs API) URL, e.g. http://HEAD:8265"


def add_parser(subparsers: Any) -> None:
    """Register ``submit``, ``logs`` and ``stop`` on an argparse subparsers object."""
    submit = subparsers.add_parser(
        "submit",
        help="submit a labeling job to a Ray cluster (resubmitting resumes it)",
        description=(
            "Submit the job `labeler run` would run to a Ray cluster through the Ray Jobs API. "
            "Takes the same job file and flags as `labeler run` (see `labeler run --help`); "
            "prints the job id. Resubmitting the same job resumes it from its output."
        ),
    )
    submit.add_argument("job", nargs="?", help="a TOML job file; flags override it")
    add_job_flags(submit.add_argument_group("labeler run settings"))
    submit.add_argument("--address", help=ADDRESS_HELP)
    submit.add_argument("--wait", action="store_true",
                        help="stream the job's log until it ends; exit 1 unless it succeeded")
    deps = submit.add_mutually_exclusive_group()
    deps.add_argument("--pip", action="store_true",
                      help="install labeler's dependencies, pinned to the versions installed "
                           "here, on the nodes (for clusters without the worker image)")
    deps.add_argument("--requirements", metavar="FILE",
                      help="install these requirements on the nodes")
    submit.add_argument("--no-ship-code", action="store_true", dest="no_ship_code",
                        help="use the labeler installed on the nodes instead of this source")
    submit.add_argument("--python", default="python",
                        help="interpreter that runs the job on the head node (default: python)")
    submit.add_argument("--dry-run", action="store_true", dest="dry_run",
                        help="print the submission id, entrypoint and runtime_env; submit nothing")
    submit.set_defaults(func=run_submit)

    logs = subparsers.add_parser("logs", help="print (or follow) the log of a submitted job")
    logs.add_argument("job_id", metavar="JOB_ID")
    logs.add_argument("--address", help=ADDRESS_HELP)
    logs.add_argument("-f", "--follow", action="store_true",
                      help="stream until the job ends; exit 1 unless it succeeded")
    logs.set_defaults(func=run_logs)

    stop = subparsers.add_parser("stop", help="stop a submitted job")
    stop.add_argument("job_id", metavar="JOB_ID")
    stop.add_argument("--address", help=ADDRESS_HELP)
    stop.add_argument("--wait", action="store_true", help="wait until the job has stopped")
    stop.set_defaults(func=run_stop)


def _job_flag_fields() -> dict[str, str]:
    """The ``labeler run`` settings that are flags, with their types: the ``JobConfig`` fields
    (not the method table, not the cluster address) and the methods' own flags."""
    fields = {name: str(field.annotation) for name, field in JobConfig.model_fields.items()
              if name not in ("address", "settings")}
    return {**fields, **{name: "str" for name in method_flags()}}


def add_job_flags(group: Any) -> None:
    """One flag per ``labeler run`` setting, named as ``labeler run`` names them.

    Derived from the job model and the method registry, so ``labeler submit`` accepts every
    setting ``labeler run`` forwards to the job, without sharing argparse actions with it.
    """
    for name, kind in _job_flag_fields().items():
        option = "--" + name.replace("_", "-")
        if name == "method":
            group.add_argument(option, choices=list(methods()), default=None)
        elif "bool" in kind:
            group.add_argument(option, action="store_true", default=None)
        elif "int" in kind:
            group.add_argument(option, type=int, default=None, dest=name)
        elif "float" in kind:
            group.add_argument(option, type=float, default=None, dest=name)
        else:
            group.add_argument(option, default=None, dest=name)


def job_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The ``labeler run`` settings given as flags (``None`` when not given)."""
    return {name: getattr(args, name) for name in _job_flag_fields()}


def run_submit(args: argparse.Namespace) -> int:
    """``labeler submit``."""
    from labeler.cluster import submit as jobs

    pip = None
    if args.pip:
        pip = jobs.pinned_requirements()
    elif args.requirements:
        pip = jobs.read_requirements(args.requirements)
    address = (args.address or os.environ.get("RAY_API_SERVER_ADDRESS")
               or os.environ.get("RAY_ADDRESS"))
    spec = jobs.build_job_spec(args.job, job_overrides(args), ship_code=not args.no_ship_code,
                               pip=pip, python=args.python,
                               local_cluster=jobs.is_local_address(address))
    out = sys.stdout
    if args.dry_run:
        out.write(json.dumps(spec.describe(), indent=2) + "\n")
        return EXIT_OK
    client = jobs.connect(args.address)
    submission = jobs.submit_job(client, spec)
    out.write(submission.job_id + "\n")
    out.flush()
    if submission.new:
        logger.info("submitted %s%s; follow it with `labeler logs %s --follow`, stop it with "
                    "`labeler stop %s`", submission.job_id,
                    f" (resuming {submission.previous[-1]})" if submission.previous else "",
                    submission.job_id, submission.job_id)
    else:
        logger.info("%s is already running this job: nothing submitted", submission.job_id)
    if not args.wait:
        return EXIT_OK
    return _follow(client, submission.job_id, spec.config.output)


def run_logs(args: argparse.Namespace) -> int:
    """``labeler logs``."""
    from labeler.cluster import submit as jobs

    client = jobs.connect(args.address)
    if args.follow:
        return _follow(client, args.job_id, None)
    sys.stdout.write(client.get_job_logs(args.job_id))
    return EXIT_OK


def run_stop(args: argparse.Namespace) -> int:
    """``labeler stop``."""
    from labeler.cluster import submit as jobs

    client = jobs.connect(args.address)
    stopping = jobs.stop_job(client, args.job_id)
    if not stopping:
        sys.stdout.write(f"{args.job_id} is not running ({jobs.job_status(client, args.job_id)})\n")
        return EXIT_OK
    if args.wait:
        status = jobs.wait_for_job(client, args.job_id)
        sys.stdout.write(f"{args.job_id} {status}\n")
    else:
        sys.stdout.write(f"{args.job_id}: stop requested\n")
    return EXIT_OK


def _follow(client: Any, job_id: str, output: str | None) -> int:
    from labeler.cluster import submit as jobs
    from labeler.io.uris import redact_uri

    try:
        status = jobs.wait_for_job(client, job_id, out=sys.stdout)
    except KeyboardInterrupt:
        sys.stderr.write(f"\nstopped following; the job keeps running (labeler stop {job_id})\n")
        return EXIT_INTERRUPTED
    where = f"; results in {redact_uri(output)}" if output and status == "SUCCEEDED" else ""
    sys.stdout.write(f"job {job_id} {status}{where}\n")
    return EXIT_OK if status == "SUCCEEDED" else EXIT_JOB_FAILED
