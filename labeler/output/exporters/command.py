"""``labeler export OUTPUT --format F --out DIR``: argparse in, :func:`.export.export` out."""

from __future__ import annotations

import argparse
import sys

from labeler.output.coco_files import DEFAULT_MAX_ANNOTATIONS
from labeler.output.exporters.export import DEFAULT_TOLERANCE, FORMATS, IMAGE_MODES, export
from labeler.output.exporters.filters import ExportFilters, parse_min_score


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "export", help="write a finished output in another format (streaming)",
        description="Write a finished labeler output as COCO (RLE or polygons), YOLO-seg, "
                    "label-map PNGs, Label Studio tasks, CVAT's COCO layout or FiftyOne's "
                    "COCO dataset directory.",
    )
    parser.add_argument("output", help="the run's output folder URI")
    parser.add_argument("--format", required=True, choices=list(FORMATS), dest="fmt")
    parser.add_argument("--out", required=True, help="the export folder")
    parser.add_argument("--images", choices=IMAGE_MODES, default="none",
                        help="place the images beside the export (default: none)")
    parser.add_argument("--min-score", action="append", default=[], metavar="[CLASS=]S",
                        help="minimum score, for every class or one (repeatable)")
    parser.add_argument("--min-area", type=float, default=0.0, metavar="A",
                        help="minimum mask area: pixels if >= 1, else a fraction of the image")
    parser.add_argument("--max-segments", type=int, default=None, metavar="N",
                        help="keep the N best-scoring annotations per image")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help=f"polygon simplification in pixels (default {DEFAULT_TOLERANCE})")
    parser.add_argument("--coco-max-annotations", type=int, default=None, metavar="N",
                        help="coco-rle/coco-polygons: above N annotations write "
                             "coco/part-NNNNN.json files and coco/index.json "
                             f"(default {DEFAULT_MAX_ANNOTATIONS})")
    parser.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    filters = ExportFilters(min_score=parse_min_score(args.min_score), min_area=args.min_area,
                            max_segments=args.max_segments)
    summary = export(args.output, args.fmt, args.out, images=args.images, filters=filters,
                     tolerance=args.tolerance, coco_max_annotations=args.coco_max_annotations)
    filtered = sum(summary.filtered.values())
    sys.stdout.write(
        f"{summary.format}: {summary.images} images, {summary.annotations} annotations in "
        f"{summary.out} ({', '.join(summary.files)})\n"
        + (f"filtered out: {filtered} ("
           + ", ".join(f"{k} {v}" for k, v in sorted(summary.filtered.items())) + ")\n"
           if filtered else "")
        + (f"images placed: {summary.images_placed}\n" if summary.images_placed else "")
    )
    if summary.image_failures:
        sys.stdout.write(f"{len(summary.image_failures)} images could not be placed "
                         f"(see {summary.out}/export.json)\n")
        return 1
    return 0
