"""``labeler export OUTPUT --format F --out DIR``: argparse in, :func:`.export.export` out."""

from __future__ import annotations

import argparse
import sys

from labeler.output.coco_files import DEFAULT_MAX_ANNOTATIONS
from labeler.output.exporters.base import ExportOptions
from labeler.output.exporters.export import DEFAULT_TOLERANCE, FORMATS, IMAGE_MODES, export
from labeler.output.exporters.filters import ExportFilters, parse_min_score
from labeler.output.exporters.review import parse_renames


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "export", help="write a finished output in another format (streaming)",
        description="Write a finished labeler output as COCO (RLE or polygons), YOLO-seg, "
                    "label-map PNGs, Label Studio tasks, CVAT's COCO layout, FiftyOne's "
                    "COCO dataset directory or a Hugging Face dataset folder (hf).",
    )
    parser.add_argument("output", help="the run's output folder URI")
    parser.add_argument("--format", required=True, choices=list(FORMATS), dest="fmt")
    parser.add_argument("--out", required=True, help="the export folder")
    parser.add_argument("--images", choices=IMAGE_MODES, default="none",
                        help="place the images beside the export (hf: copy embeds them in the rows; "
                             "default: none)")
    parser.add_argument("--min-score", action="append", default=[], metavar="[CLASS=]S",
                        help="minimum score, for every class or one (repeatable)")
    parser.add_argument("--min-area", type=float, default=0.0, metavar="A",
                        help="minimum mask area: pixels if >= 1, else a fraction of the image")
    parser.add_argument("--max-segments", type=int, default=None, metavar="N",
                        help="keep the N best-scoring annotations per image")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help=f"polygon simplification in pixels (default {DEFAULT_TOLERANCE})")
    defaults = ExportOptions()
    studio = parser.add_argument_group("Label Studio (label-studio, label-studio-brush)")
    studio.add_argument("--image-url-prefix", metavar="PREFIX",
                        help="a task's image is PREFIX + its relative file name, e.g. "
                             "/data/local-files/?d=photos/, s3://bucket/photos/, "
                             "https://host/photos/ (default: /data/local-files/?d=<the image "
                             "root's folder name>/, or images/ for placed images)")
    studio.add_argument("--as-annotations", action="store_true",
                        help="import the masks as annotations instead of predictions")
    studio.add_argument("--fragment-min-area", type=float, default=defaults.fragment_min_area,
                        metavar="PX",
                        help="label-studio: drop a segment's fragments below PX pixels from its "
                             f"polygon; the largest is kept (default {defaults.fragment_min_area:g})")
    coco = parser.add_argument_group("COCO (coco-rle, coco-polygons)")
    coco.add_argument("--coco-max-annotations", type=int, default=None, metavar="N",
                      help="above N annotations write coco/part-NNNNN.json files (each a "
                           "complete COCO file) and coco/index.json "
                           f"(default {DEFAULT_MAX_ANNOTATIONS})")
    review = parser.add_argument_group("review aids")
    review.add_argument("--rename", action="append", default=[], metavar="OLD=NEW",
                        help="rename a class (repeatable); two classes renamed to one name are "
                             "merged, their masks united per image")
    review.add_argument("--val-fraction", type=float, default=defaults.val_fraction,
                        metavar="F",
                        help="coco-rle, coco-polygons, cvat, yolo-seg, hf: put about this share "
                             "of the images in a val split, drawn by --seed (default: no split)")
    review.add_argument("--seed", type=int, default=defaults.seed,
                        help=f"the val split's seed (default {defaults.seed})")
    review.add_argument("--label-field", default=defaults.label_field, metavar="NAME",
                        help="fiftyone: the sample field load_fiftyone.py imports the labels "
                             f"into (default {defaults.label_field})")
    parser.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    filters = ExportFilters(min_score=parse_min_score(args.min_score), min_area=args.min_area,
                            max_segments=args.max_segments)
    options = ExportOptions(image_url_prefix=args.image_url_prefix,
                            as_annotations=args.as_annotations,
                            fragment_min_area=args.fragment_min_area,
                            renames=parse_renames(args.rename), val_fraction=args.val_fraction,
                            seed=args.seed, label_field=args.label_field,
                            coco_max_annotations=args.coco_max_annotations)
    summary = export(args.output, args.fmt, args.out, images=args.images, filters=filters,
                     tolerance=args.tolerance, options=options)
    filtered = sum(summary.filtered.values())
    sys.stdout.write(
        f"{summary.format}: {summary.images} images, {summary.annotations} annotations in "
        f"{summary.out} ({', '.join(summary.files)})\n"
        + (f"filtered out: {filtered} ("
           + ", ".join(f"{k} {v}" for k, v in sorted(summary.filtered.items())) + ")\n"
           if filtered else "")
        + (f"images placed: {summary.images_placed}\n" if summary.images_placed else "")
        + (f"{len(summary.long_names)} names too long for a file system were shortened "
           f"(export.json's long_names has the originals)\n" if summary.long_names else "")
        + ("splits: " + ", ".join(f"{k} {v}" for k, v in sorted(summary.splits.items())) + "\n"
           if len(summary.splits) > 1 else "")
    )
    if summary.image_failures:
        sys.stdout.write(f"{len(summary.image_failures)} images could not be placed "
                         f"(see {summary.out}/export.json)\n")
        return 1
    return 0
