"""The ``labeler`` command line: argparse in, library calls out.

Flags that the user does not set stay ``None`` and never override the job file or the library
defaults, so defaults live in one place (``labeler.config``).
"""

from __future__ import annotations

import argparse
import logging
import sys

from labeler import __version__

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
    from labeler.cluster.command import add_parser as add_cluster
    from labeler.eval.command import add_parser as add_eval
    from labeler.methods.diffews.command import add_parser as add_diffews
    from labeler.methods.slime.command import add_parser as add_slime
    from labeler.output.exporters.command import add_parser as add_export
    from labeler.preview.command import add_parser as add_preview

    add_eval(commands)
    add_preview(commands)
    add_export(commands)
    add_slime(commands)
    add_diffews(commands)
    add_cluster(commands)  # submit, logs, stop
    return parser


def _add_run(commands) -> None:
    run = commands.add_parser("run", help="label a collection (resumes an existing output)")
    run.add_argument("job", nargs="?", help="a TOML job file; flags override it")
    run.add_argument("--method", choices=["diffseg", "slime", "diffews"])
    run.add_argument("--input", help="folder, manifest (.txt/.csv/.parquet) or image-bytes Parquet URI")
    run.add_argument("--output", help="output folder URI")
    run.add_argument("--model", help="tiny, a Hugging Face id, or a diffusers directory/URI")
    run.add_argument("--embeddings", help="SLiMe embedding set (.safetensors)")
    run.add_argument("--support-images", dest="support_images", help="DiffewS support images (folder/file URI)")
    run.add_argument("--support-masks", dest="support_masks", help="DiffewS support label maps (.png/.npy)")
    run.add_argument("--classes", help="DiffewS class names, background first: background,a,b")
    run.add_argument("--address", help="Ray cluster address (default: a local instance)")
    run.add_argument("--workers", type=int, help="number of model workers")
    run.add_argument("--gpus-per-worker", type=float, dest="gpus_per_worker")
    run.add_argument("--batch-size", type=int, dest="batch_size")
    run.add_argument("--shard-size", type=int, dest="shard_size")
    run.add_argument("--seed", type=int)
    run.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda when available)")
    run.add_argument("--dtype", help="auto, float32, float16, bfloat16")
    run.add_argument("--max-pixels", type=int, dest="max_pixels", help="decompression-bomb limit")
    run.add_argument("--overwrite", action="store_true", default=None,
                     help="replace an existing output made with other settings")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.set_defaults(func=_run)


def _add_status(commands) -> None:
    status = commands.add_parser("status", help="progress and failures of a run")
    status.add_argument("output", help="the run's output folder URI")
    status.set_defaults(func=_status)


def _run(args: argparse.Namespace) -> int:
    from labeler.config import build_config, load_job_file
    from labeler.runtime.job import run_job

    file_values = load_job_file(args.job) if args.job else {}
    keys = ("method", "input", "output", "model", "embeddings", "support_images", "support_masks",
            "classes", "address", "workers",
            "gpus_per_worker", "batch_size", "shard_size", "seed", "device", "dtype", "max_pixels",
            "overwrite")
    config = build_config(file_values, {key: getattr(args, key) for key in keys})
    summary = run_job(config, progress=not args.no_progress)
    out = sys.stdout
    out.write(
        f"\n{summary.images} images: {summary.labeled} labeled, {summary.failed} failed; "
        f"{summary.annotations} annotations; {summary.shards_processed} of {summary.shards} shards "
        f"processed in {summary.seconds:.1f} s"
        + (f" ({summary.images_per_second:.2f} images/s)" if summary.images_per_second else "")
        + "\n"
    )
    if summary.failure_reasons:
        out.write("failed images by reason: " + ", ".join(
            f"{reason} {count}" for reason, count in sorted(summary.failure_reasons.items())) + "\n")
    if summary.worker_deaths or summary.retries:
        out.write(f"{summary.worker_deaths} worker restarts, {summary.retries} shard retries\n")
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
    return 0


def _status(args: argparse.Namespace) -> int:
    from labeler.runtime.status import describe_run

    sys.stdout.write(describe_run(args.output) + "\n")
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
    from labeler.io.inputs import InputError

    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError, InputError) as error:
        if args.verbose:
            raise
        sys.stderr.write(f"labeler: error: {error}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
