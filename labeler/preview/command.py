"""``labeler preview``: overlay images and a static HTML gallery of an output.

Usage::

    labeler preview OUTPUT [--n 50] [--only-failed] [--out DIR] [--max-size 768]
                    [--alpha 0.45] [--seed S] [--workers 4]

Writes ``OUTPUT/preview/index.html`` and ``OUTPUT/preview/overlays/`` (or under ``--out``); any
fsspec URI works for both.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from labeler.eval.loading import EvalInputError
from labeler.io.uris import InputError
from labeler.preview.build import build_preview

EXIT_OK = 0
EXIT_BAD_INPUT = 2


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``preview`` on an argparse subparsers object; ``func`` returns an exit code."""
    p = subparsers.add_parser(
        "preview",
        help="write overlay images and a static HTML gallery of an output",
        description=(
            "Draw the annotations of an output over the original images (colored per category, "
            "with boundaries and a legend) and write a static gallery, preview/index.html, listing "
            "per-image annotation counts and categories and the failed images with their reasons."
        ),
    )
    p.add_argument("output", metavar="OUTPUT", help="output folder of a run (any fsspec URI)")
    p.add_argument(
        "--n",
        type=int,
        default=50,
        help="at most N labeled overlays and N failed entries (default 50)",
    )
    p.add_argument("--only-failed", action="store_true", help="list failed images only")
    p.add_argument("--out", metavar="DIR", help="destination folder (default OUTPUT/preview)")
    p.add_argument(
        "--max-size", type=int, default=768, help="longer side of overlays in pixels (default 768)"
    )
    p.add_argument("--alpha", type=float, default=0.45, help="mask fill opacity (default 0.45)")
    p.add_argument(
        "--seed", type=int, help="show a seeded random sample instead of the first N images"
    )
    p.add_argument("--workers", type=int, default=4, help="threads rendering overlays (default 4)")
    p.set_defaults(func=run_preview)
    return p


def run_preview(args: argparse.Namespace) -> int:
    """Run ``labeler preview`` from parsed arguments; returns the exit code."""
    if args.n < 0:
        sys.stderr.write("labeler preview: error: --n must be >= 0\n")
        return EXIT_BAD_INPUT
    try:
        result = build_preview(
            args.output,
            n=args.n,
            only_failed=args.only_failed,
            out_uri=args.out,
            max_size=args.max_size,
            alpha=args.alpha,
            seed=args.seed,
            workers=args.workers,
        )
    except (EvalInputError, FileNotFoundError, InputError) as exc:
        sys.stderr.write(f"labeler preview: error: {exc}\n")
        return EXIT_BAD_INPUT
    s = result.summary
    sys.stdout.write(
        f"preview: {len(result.labeled)} overlays, {len(result.failed)} failed images listed "
        f"({s.n_labeled} labeled, {s.n_failed} failed of {s.n_images}) -> {result.index_uri}\n"
    )
    return EXIT_OK
