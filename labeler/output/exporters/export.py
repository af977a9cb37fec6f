"""``labeler export``: stream a finished output into one format, with filters and images.

The formats are registered in :data:`FORMATS` by name. Images are read from their source URI
only with ``--images copy|link``; otherwise the export names them by ``file_name`` relative to the
output's image root.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from dataclasses import dataclass, field

from labeler.errors import UserError
from labeler.io.folders import Folder
from labeler.io.reading import read_image_bytes
from labeler.io.refs import ref_from_uri
from labeler.output.exporters.base import ExportContext, Exporter, ExportOptions
from labeler.output.exporters.coco import (
    CocoExporter,
    CocoPolygonExporter,
    CvatExporter,
    FiftyOneExporter,
)
from labeler.output.exporters.cvat_images import CvatImagesExporter
from labeler.output.exporters.filters import ExportFilters
from labeler.output.exporters.hf import HfExporter
from labeler.output.exporters.label_maps import LabelMapExporter
from labeler.output.exporters.label_studio import LabelStudioBrushExporter, LabelStudioExporter
from labeler.output.exporters.long_names import export_name
from labeler.output.exporters.review import CategoryMerger, split_of
from labeler.output.exporters.source import ExportImage, OutputSource
from labeler.output.exporters.yolo_seg import YoloSegExporter

#: format name -> (exporter class, consumer, what it holds); the table of docs/outputs.md
FORMATS: dict[str, type[Exporter]] = {
    "coco-rle": CocoExporter,
    "coco-polygons": CocoPolygonExporter,
    "yolo-seg": YoloSegExporter,
    "label-maps": LabelMapExporter,
    "label-studio": LabelStudioExporter,
    "label-studio-brush": LabelStudioBrushExporter,
    "cvat": CvatExporter,
    "cvat-images": CvatImagesExporter,
    "fiftyone": FiftyOneExporter,
    "hf": HfExporter,
}
IMAGE_MODES = ("none", "copy", "link")
#: the formats that read each :class:`ExportOptions` field (the others refuse it when set)
OPTION_FORMATS = {
    "image_url_prefix": ("label-studio", "label-studio-brush"),
    "as_annotations": ("label-studio", "label-studio-brush"),
    "fragment_min_area": ("label-studio",),
    "val_fraction": ("coco-rle", "coco-polygons", "cvat", "yolo-seg", "hf"),
    "seed": ("coco-rle", "coco-polygons", "cvat", "yolo-seg", "hf"),
    "label_field": ("fiftyone",),
    "coco_max_annotations": ("coco-rle", "coco-polygons"),
}
#: default polygon simplification, pixels (round-trip IoU in bench/README.md)
DEFAULT_TOLERANCE = 0.5


@dataclass
class ExportSummary:
    """What an export wrote and what its filters left out."""

    out: str
    format: str
    images: int = 0
    annotations: int = 0
    filtered: Counter = field(default_factory=Counter)
    splits: Counter = field(default_factory=Counter)
    images_placed: int = 0
    image_failures: dict[str, str] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    long_names: dict[str, str] = field(default_factory=dict)


def export(output: str, fmt: str, out: str, *, images: str = "none",
           filters: ExportFilters | None = None, tolerance: float = DEFAULT_TOLERANCE,
           storage_options: dict | None = None,
           options: ExportOptions | None = None) -> ExportSummary:
    """Write ``output`` (a finished run) as ``fmt`` into the folder ``out``.

    Raises:
        ValueError: unknown format or image mode, a filter naming an unknown class, ``link``
            for a remote export or non-local images, or ``output`` not a finished output.
        UserError: an option the format does not read.
    """
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r} (known: {', '.join(FORMATS)})")
    if images not in IMAGE_MODES:
        raise UserError(f"--images must be one of {', '.join(IMAGE_MODES)} (got {images!r})")
    if tolerance < 0:
        raise UserError(f"--tolerance must be >= 0 (got {tolerance})")
    filters = filters or ExportFilters()
    options = options or ExportOptions()
    _check_options(fmt, options)
    source = OutputSource(output, storage_options)
    filters.check_classes([c["name"] for c in source.categories])
    merger = CategoryMerger(source.categories, options.renames)
    target = Folder(out, storage_options)
    if images == "link" and not target.is_local:
        raise UserError("--images link needs a local --out folder")
    info = {**_info(source), "exported_as": fmt}
    exporter_class = FORMATS[fmt]
    images_dir = None if images == "none" else exporter_class.images_subdir
    context = ExportContext(target, merger.categories, info, images_dir, tolerance, images,
                            storage_options, options)
    names = {c["id"]: c["name"] for c in source.categories}
    summary = ExportSummary(out=out, format=fmt)
    shorten = images_dir is not None or exporter_class.names_files
    with exporter_class(context) as exporter:
        for image, found in source:
            kept = merger.apply(filters.apply(image.width, image.height, found, names,
                                              summary.filtered))
            image = dataclasses.replace(
                image, split=split_of(image.file_name, options.val_fraction, options.seed))
            if shorten:
                image = _short_named(image, summary.long_names)
            exporter.add(image, kept)
            summary.images += 1
            summary.splits[image.split] += 1
            summary.annotations += len(kept)
            if images_dir is not None:
                _place(image, target, exporter.image_path(image), images, summary,
                       storage_options)
    summary.files = exporter.files
    target.write_json("export.json", {
        "format": fmt, "source": output, "image_root": source.image_root,
        "images": summary.images, "annotations": summary.annotations,
        "filtered": dict(summary.filtered), "images_placed": summary.images_placed,
        "image_failures": summary.image_failures,
        "long_names": summary.long_names,
        "filters": {"min_score": filters.min_score, "min_area": filters.min_area,
                    "max_segments": filters.max_segments},
        "tolerance": tolerance,
        "splits": dict(summary.splits),
        "renames": options.renames,
        "seed": options.seed,
    })
    return summary


def _check_options(fmt: str, options: ExportOptions) -> None:
    """Refuse an option set away from its default for a format that would ignore it."""
    defaults = ExportOptions()
    for name, formats in OPTION_FORMATS.items():
        if getattr(options, name) != getattr(defaults, name) and fmt not in formats:
            flag = "--" + name.replace("_", "-")
            raise UserError(f"{flag} applies to --format {' or '.join(formats)}, not {fmt}")
    if options.fragment_min_area < 0:
        raise UserError(f"--fragment-min-area must be >= 0 (got {options.fragment_min_area})")
    if not 0 <= options.val_fraction < 1:
        raise UserError(f"--val-fraction must be in [0, 1) (got {options.val_fraction})")
    if options.coco_max_annotations is not None and options.coco_max_annotations < 1:
        raise UserError(f"--coco-max-annotations must be >= 1 (got {options.coco_max_annotations})")
    if not options.label_field.isidentifier():
        raise UserError(f"--label-field must be a field name (got {options.label_field!r})")


def _info(source: OutputSource) -> dict:
    recorded = source.config
    return {
        "description": f"labeler {source.method} pseudo-labels",
        "method": source.method,
        "run_id": recorded["fingerprint"],
        "date_created": recorded.get("created"),
        "labeler_version": recorded.get("labeler_version"),
        "image_root": source.image_root,
    }


def _short_named(image: ExportImage, long_names: dict[str, str]) -> ExportImage:
    """``image`` under the short name its files get when its own is too long
    (:mod:`.long_names`); the pair is recorded in ``long_names`` (short -> original)."""
    short = export_name(image.file_name)
    if short == image.file_name:
        return image
    long_names[short] = image.file_name
    return dataclasses.replace(image, file_name=short, original_name=image.file_name)


def _place(image: ExportImage, target: Folder, relative: str, mode: str,
           summary: ExportSummary, storage_options: dict | None) -> None:
    """Copy or link one image beside the export; a failure is recorded, not raised."""
    try:
        if mode == "link":
            ref = ref_from_uri(image.uri)
            if ref.is_parquet_row or "://" in image.uri and not image.uri.startswith("file://"):
                raise UserError("only local files can be linked (use --images copy)")
            path = target.path(relative)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if os.path.lexists(path):
                os.remove(path)
            os.symlink(os.path.abspath(image.uri.removeprefix("file://")), path)
        else:
            target.write_bytes(relative, read_image_bytes(ref_from_uri(image.uri),
                                                          storage_options=storage_options))
        summary.images_placed += 1
    except Exception as error:  # noqa: BLE001 - recorded per image in export.json
        summary.image_failures[image.file_name] = f"{type(error).__name__}: {error}"
