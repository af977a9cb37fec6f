"""The ``labeler`` command line: argparse in, library calls out.

Flags that the user does not set stay ``None`` and never override the job file or the library
defaults, so defaults live in one place (``labeler.config``).
"""

from __future__ import annotations

import argparse
import logging
import sys

from labeler import __version__
from labeler.cluster.command import add_parser as add_cluster
from labeler.config import JobConfig, build_config, load_job_file
from labeler.doctor import add_parser as add_doctor
from labeler.errors import UserError
from labeler.eval.command import add_parser as add_eval
from labeler.io.uris import redact_text
from labeler.methods.registry import method_flags, methods
from labeler.output.coco_files import DEFAULT_MAX_ANNOTATIONS
from labeler.output.exporters.command import add_parser as add_export
from labeler.preview.command import add_parser as add_preview
from labeler.report.command import add_parser as add_report
from labeler.runtime.dry_run import dry_run
from labeler.runtime.job import run_job
from labeler.runtime.status import describe_run
from labeler.runtime.verify import verify_output

#: Exit statuses: bad settings and other user mistakes; every image accounted for, but some
#: failed in a way a re-run may heal; Ctrl-C.
EXIT_USER_ERROR = 2
EXIT_MAY_HEAL = 3
EXIT_INTERRUPTED = 130

logger = logging.getLogger("labeler")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="labeler",
        description="Segmentation labels for image collections from Stable Diffusion attention.",
    )
    parser.add_argument("--version", action="version", version=f"labeler {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_run(commands)
    _add_status(commands)
    _add_verify(commands)
    add_eval(commands)
    add_preview(commands)
    add_report(commands)
    add_export(commands)
    for spec in methods().values():  # a method's own commands: labeler slime fit, ...
        if spec.commands is not None:
            spec.commands(commands)
    add_cluster(commands)  # submit, logs, stop
    add_doctor(commands)
    return parser


RUN_DESCRIPTION = """\
Label a collection: list the input, cut it into shards, label them on Ray workers (or in this
process with --executor local), write COCO annotations (compressed RLE) as JSON and Parquet
under --output. Re-running the same command resumes (finished shards are skipped, images added
to the input are labeled). Flags override the job file; method settings go in the job file's
table of the method ([METHOD], listed below)."""


def _default(name: str) -> str:
    """The library default of a job setting, for the help text (one place: labeler.config)."""
    value = JobConfig.model_fields[name].default
    return {"model": "per method: " + ", ".join(
                f"{spec.default_model or 'from its resources'} for {spec.name}"
                for spec in methods().values()),
            "workers": "one per GPU, one CPU worker without GPUs", "gpus_per_worker": "1",
            "cpus_per_worker": "the CPUs per GPU for GPU workers, 1 for CPU workers",
            "device": "cuda when available", "address": "a local Ray instance",
            "max_pixels": "the decoder's limit",
            "allow_protocols": "the input's own protocol; local files under a local input's "
                               "folder"}.get(name, repr(value))


def _method_settings_help() -> str:
    """Each method's table with its defaults (from its settings model)."""
    lines = ["method settings (job file table, e.g. [diffseg] kl_threshold = 0.9):"]
    for spec in methods().values():
        lines.append(f"  [{spec.name}]" + (f"  {spec.settings_note}" if spec.settings_note else ""))
        lines += [f"    {name} = {field.default!r}" for name, field in spec.settings.model_fields.items()
                  if not field.is_required()]
    return "\n".join(lines)


def _add_run(commands) -> None:
    run = commands.add_parser("run", help="label a collection (resumes an existing output)",
                              description=RUN_DESCRIPTION, epilog=_method_settings_help(),
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("job", nargs="?", help="a TOML job file; flags override it")

    def flag(option: str, name: str, text: str, **kwargs) -> None:
        run.add_argument(option, dest=name, help=f"{text} (default: {_default(name)})", **kwargs)

    flag("--method", "method", "; ".join(f"{name}: {spec.summary}" for name, spec in methods().items()),
         choices=list(methods()))
    run.add_argument("--input", help="folder, manifest (.txt/.csv/.parquet) or image-bytes Parquet "
                                     "URI (required)")
    run.add_argument("--output", help="output folder URI (required)")
    flag("--model", "model", "tiny, a Hugging Face id, or a diffusers directory/URI")
    for name, (method_flag, takers) in method_flags().items():
        run.add_argument(method_flag.option, dest=name, metavar=method_flag.metavar,
                         type=_comma_list if method_flag.is_list else None,
                         help=f"{method_flag.help} (--method {' or '.join(takers)})")
    flag("--executor", "executor", "where shards run: ray (Ray workers on a local instance or the "
         "cluster at --address) or local (this process, no Ray; same retries and resume)",
         choices=["ray", "local"])
    flag("--address", "address", "Ray cluster address")
    flag("--workers", "workers", "number of model workers", type=int)
    flag("--gpus-per-worker", "gpus_per_worker", "GPUs per worker; 0 for CPU workers", type=float)
    flag("--cpus-per-worker", "cpus_per_worker",
         "CPUs each worker reserves = its post-processing threads", type=int)
    flag("--batch-size", "batch_size", "images per model call", type=int)
    flag("--shard-size", "shard_size", "images per shard (unit of retry and resume)", type=int)
    flag("--seed", "seed", "random seed", type=int)
    flag("--coco-max-annotations", "coco_max_annotations", "above N annotations, write "
         "coco/part-NNNNN.json files (each a complete COCO file) and coco/index.json instead "
         f"of coco.json (default {DEFAULT_MAX_ANNOTATIONS:,})", type=int, metavar="N")
    flag("--device", "device", "cuda, cuda:1, cpu")
    flag("--dtype", "dtype", "auto, float32, float16, bfloat16")
    flag("--max-pixels", "max_pixels", "decompression-bomb limit", type=int)
    flag("--draft-decode", "draft_decode", "decode images only as large as the method's input "
         "(JPEG DCT scaling, else an integer box reduce; both sides stay >= the input side); "
         "labels stay at the stored size, images.parquet's decode_scale records the factor; "
         "parity modes decode at full size", action=argparse.BooleanOptionalAction)
    flag("--stall-timeout", "stall_timeout", "seconds a busy Ray worker may show no sign of life "
         "(no image read, no batch labeled) before it is killed and replaced and its shards "
         "requeued", type=float, metavar="SECONDS")
    flag("--allow-protocols", "allow_protocols", "protocols the workers may read, comma-separated "
         "(e.g. s3,https; file: any local path)", type=_comma_list, metavar="LIST")
    run.add_argument("--overwrite", action="store_true", default=None,
                     help="replace an existing output made with other settings (default: refuse)")
    run.add_argument("--wait-lock", action="store_true", default=None,
                     help="wait while another driver holds the output and renews its lease; the "
                          "wait is logged every minute and ends when the holder releases it or "
                          "its renewals stop for 60 s (default: refuse)")
    run.add_argument("--retry-failed", action=argparse.BooleanOptionalAction, default=None,
                     help="redo the shards holding images whose failure may heal: storage "
                          "errors, out of memory (default: on)")
    run.add_argument("--verify-inputs", action=argparse.BooleanOptionalAction, default=None,
                     help="on a re-run, relabel the images whose input changed since they were "
                          "labeled (ETag, mtime and size, or a digest); --verify-inputs also "
                          "checks manifest entries and Parquet rows (a HEAD or stat each, or "
                          "their bytes) (default: where the listing tells for free: folders on "
                          "S3 and local disks)")
    run.add_argument("--strict", action="store_true", default=None,
                     help="exit 1 when any image failed, even permanently (default: off)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar (default: shown)")
    run.add_argument("--dry-run", action="store_true",
                     help="check the settings, count the input, load the model and time one "
                          "image; write nothing")
    run.set_defaults(func=_run)


def _comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _add_status(commands) -> None:
    status = commands.add_parser("status", help="progress and failures of a run")
    status.add_argument("output", help="the run's output folder URI")
    status.add_argument("--deep", action="store_true",
                        help="hash every committed part (default: sizes and storage stamps, "
                             "hashing only the parts rewritten since their commit)")
    status.set_defaults(func=_status)


def _add_verify(commands) -> None:
    verify = commands.add_parser(
        "verify", help="check a finished output end to end (digests, Parquet, RLE, COCO files)",
        description="Check a finished output without rewriting anything, shard by shard in "
                    "parallel processes: every part against its recorded sha256 and counts, "
                    "images.parquet against the plan, every RLE from its run lengths (size, "
                    "area, bbox), the COCO files record by record against the parts. Exit 0 "
                    "when sound, 1 with the list of problems.")
    verify.add_argument("output", help="the run's output folder URI")
    verify.add_argument("--inputs", action="store_true",
                        help="also compare the input as it is now with what was labeled: images "
                             "changed since they were read (ETag, mtime and size, or a digest), "
                             "gone, or not labeled; lists the input and looks at each entry the "
                             "listing gives no identity (a HEAD or stat, or its bytes)")
    verify.add_argument("--sample", type=int, default=0, metavar="N",
                        help="also decode about N masks in full, spread over the shards "
                             "(default 0)")
    verify.set_defaults(func=_verify)


def run_flags(args: argparse.Namespace) -> dict:
    """The job settings given as flags (None when not given): job fields and method flags."""
    keys = [name for name in JobConfig.model_fields if name != "settings"] + list(method_flags())
    return {key: getattr(args, key, None) for key in keys}


def _run(args: argparse.Namespace) -> int:
    file_values = load_job_file(args.job) if args.job else {}
    config = build_config(file_values, run_flags(args))
    if args.dry_run:
        sys.stdout.write("\n".join(dry_run(config).lines(config)) + "\n")
        return 0
    summary = run_job(config, progress=not args.no_progress)
    out = sys.stdout
    done = "" if summary.complete else (
        f"{len(summary.failed_shards)} of {summary.shards} shards failed, nothing merged; "
        "the shards done hold ")
    out.write(
        f"\n{done}{summary.images} images: {summary.labeled} labeled, {summary.failed} failed; "
        f"{summary.annotations} annotations; {summary.shards_processed} of {summary.shards} shards "
        f"processed in {summary.seconds:.1f} s"
        + (f" ({summary.images_per_second:.2f} images/s)" if summary.images_per_second else "")
        + "\n"
    )
    if summary.new_images:
        out.write(f"{summary.new_images} new images since the last run, appended to the plan\n")
    if summary.removed_images:
        out.write(f"{summary.removed_images} images are no longer in the input; their labels "
                  "stay in the output\n")
    if summary.changed_images:
        out.write(f"{summary.changed_images} images changed in the input since they were "
                  "labeled: relabeled\n")
    if summary.failure_reasons:
        out.write("failed images by reason: " + ", ".join(
            f"{reason} {count}" for reason, count in sorted(summary.failure_reasons.items())) + "\n")
    if summary.complete and summary.failed:
        out.write(f"{summary.permanently_failed} images failed permanently; "
                  f"{summary.retryable_failed} images may succeed on a re-run\n")
    if summary.worker_deaths or summary.retries:
        out.write(f"{summary.worker_deaths} worker restarts, {summary.retries} shard retries\n")
    if summary.stalls:
        out.write(f"{summary.stalls} workers showed no sign of life for --stall-timeout: killed "
                  "and replaced, their shards requeued (run/stalled/)\n")
    if not summary.complete:
        out.write(f"{len(summary.failed_shards)} shards failed after retries:\n")
        for shard_id, failure in summary.failed_shards.items():
            last_line = (failure.get("error") or "").strip().splitlines()[-1:] or ["?"]
            out.write(f"  {shard_id}: {last_line[0]}\n")
        out.write(f"Re-run the same command to retry them; logs in {summary.output}/run/\n")
        return 1
    out.write(
        f"Results in {summary.output}: coco.json, images.parquet, annotations/ "
        f"(`labeler status {summary.output}` for details)\n"
    )
    if config.strict and summary.failed:
        out.write(f"--strict: {summary.failed} images failed\n")
        return 1
    if summary.retryable_failed:
        out.write("Re-run the same command to retry the images that may succeed\n")
        return EXIT_MAY_HEAL
    return 0


def _verify(args: argparse.Namespace) -> int:
    problems = verify_output(args.output, sample=args.sample, inputs=args.inputs)
    if not problems:
        sys.stdout.write(f"{args.output}: sound\n")
        return 0
    sys.stdout.write(f"{args.output}: {len(problems)} problems\n")
    sys.stdout.write("".join(f"  {problem}\n" for problem in problems))
    return 1


def _status(args: argparse.Namespace) -> int:
    sys.stdout.write(describe_run(args.output, deep=args.deep) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("diffusers", "transformers", "fsspec", "urllib3", "botocore", "s3fs"):
        logging.getLogger(noisy).setLevel(logging.WARNING if not args.verbose else logging.INFO)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        hint = "; re-run the same command to resume" if args.command in ("run", "submit") else ""
        sys.stderr.write(f"labeler: interrupted{hint}\n")
        return EXIT_INTERRUPTED
    except UserError as error:  # anything else is a bug: its traceback, exit 1
        if args.verbose:
            raise
        sys.stderr.write(f"labeler: error: {one_line(error)}\n")
        return EXIT_USER_ERROR


def one_line(error: UserError) -> str:
    """The error's message, credentials redacted."""
    return redact_text(str(error).strip() or type(error).__name__)


if __name__ == "__main__":
    sys.exit(main())
