"""``labeler eval``: evaluate an output folder against ground truth.

Usage::

    labeler eval --pred OUTPUT --gt GT [--protocol auto|all|miou,slime,hungarian,...]
                 [--pred-kind auto|segments|classes] [--class-match auto|name|id]
                 [--classes NAMES_OR_URI] [--num-classes K] [--ignore-index 255]
                 [--unannotated background|void] [--out DIR] [--no-files] [--require-all]

The table goes to stdout; ``eval.json`` and ``eval.md`` are written to ``--out`` (default
``OUTPUT/eval``), which may be any fsspec URI.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from labeler.eval.evaluate import PROTOCOLS, EvalOptions, evaluate
from labeler.eval.loading import EvalInputError
from labeler.eval.report import format_table, to_json, to_markdown
from labeler.io.folders import Folder
from labeler.io.uris import InputError, join_uri

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_INCOMPLETE = 1
EXIT_BAD_INPUT = 2


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``eval`` on an argparse subparsers object; ``func`` returns an exit code."""
    p = subparsers.add_parser(
        "eval",
        help="evaluate an output against ground truth (mIoU, SLiMe, DiffSeg Hungarian, COCO AP)",
        description=(
            "Evaluate the predictions of a labeler output folder against ground truth: a COCO "
            "instances file or a folder of label-map PNGs paired by file stem. Prints a table "
            "and writes eval.json and eval.md."
        ),
    )
    p.add_argument(
        "--pred", required=True, metavar="PRED",
        help="the output folder of a run, a folder holding coco.json, or a COCO instances or "
             "results .json (any fsspec URI)"
    )
    p.add_argument(
        "--gt",
        required=True,
        metavar="GT",
        help="COCO instances .json, or folder of label maps (.png/.npy, pixel = class index, 255 ignored)",
    )
    p.add_argument(
        "--protocol",
        action="append",
        metavar="NAME[,NAME...]",
        help=f"auto (default), all, or any of: {', '.join(PROTOCOLS)}; repeatable or comma-separated",
    )
    p.add_argument(
        "--pred-kind",
        choices=("auto", "segments", "classes"),
        default="auto",
        help="segments = class-agnostic (DiffSeg), classes = class-aware (SLiMe, DiffSeg with names: "
        "its unnamed 'segment's count as unannotated); auto: segments when the only category is "
        "'segment'",
    )
    p.add_argument(
        "--class-match",
        choices=("auto", "name", "id"),
        default="auto",
        help="map predicted categories to GT classes by name or by id; auto = name when the GT has class "
        "names (COCO, or a classes file / --classes), else id",
    )
    p.add_argument(
        "--classes",
        metavar="NAMES_OR_URI",
        help="class names of label-map GT, index = label value: 'background,car,...' or a classes file "
        "(txt one per line, or JSON); default: classes.txt/classes.json in the GT folder",
    )
    p.add_argument(
        "--num-classes",
        type=int,
        metavar="K",
        help="number of GT classes (default: from names or data)",
    )
    p.add_argument(
        "--ignore-index",
        type=int,
        default=255,
        help="GT label ignored (default 255; negatives too)",
    )
    p.add_argument(
        "--unannotated",
        choices=("background", "void"),
        default="background",
        help="class-aware predictions: pixels without annotation are background (default) or a miss",
    )
    p.add_argument(
        "--out", metavar="DIR", help="where eval.json and eval.md go (default OUTPUT/eval)"
    )
    p.add_argument("--no-files", action="store_true", help="print the table only")
    p.add_argument(
        "--no-per-image", action="store_true", help="leave per-image rows out of eval.json"
    )
    p.add_argument(
        "--require-all",
        action="store_true",
        help="exit 1 when a ground-truth image has no labeled prediction",
    )
    p.set_defaults(func=run_eval)
    return p


def run_eval(args: argparse.Namespace) -> int:
    """Run ``labeler eval`` from parsed arguments; returns the exit code."""
    options = EvalOptions(
        protocols=args.protocol,
        pred_kind=args.pred_kind,
        class_match=args.class_match,
        classes=args.classes,
        num_classes=args.num_classes,
        ignore_index=args.ignore_index,
        unannotated=args.unannotated,
        per_image=not args.no_per_image,
    )
    try:
        report = evaluate(args.pred, args.gt, options)
    except (EvalInputError, FileNotFoundError, InputError) as exc:
        sys.stderr.write(f"labeler eval: error: {exc}\n")
        return EXIT_BAD_INPUT
    sys.stdout.write(format_table(report))
    if not args.no_files:
        out = Folder(args.out or join_uri(args.pred, "eval"))
        out.write_bytes("eval.json", to_json(report).encode("utf-8"))
        out.write_bytes("eval.md", to_markdown(report).encode("utf-8"))
        sys.stdout.write(f"wrote {out.uri_of('eval.json')} and {out.uri_of('eval.md')}\n")
    missing = report["images"]["gt_without_prediction"]
    if args.require_all and missing:
        sys.stderr.write(
            f"labeler eval: {missing} ground-truth images have no labeled prediction\n"
        )
        return EXIT_INCOMPLETE
    return EXIT_OK
