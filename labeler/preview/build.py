"""Build ``OUTPUT/preview/``: overlay images and the static gallery ``index.html``.

Selection: images are taken in ``images.parquet`` order (or a seeded random sample with
``seed``); at most ``n`` labeled images get an overlay and at most ``n`` failed images are
listed. ``only_failed`` lists failures only. Files written (any fsspec URI):

* ``<out>/overlays/<rank>_<image_id>.jpg``: overlay with legend (labeled images);
* ``<out>/overlays/failed_<rank>.jpg``: plain thumbnail of a failed image's source, when readable;
* ``<out>/index.html``: the gallery, linking to the files above with relative paths.

A source image that cannot be read does not stop the preview: its masks are drawn on a gray
canvas and the card says why. A source whose size differs from the recorded ``width``/``height``
is EXIF-transposed when that fixes it, else resized to the recorded size (noted on the card).
"""

from __future__ import annotations

import io
import logging
import random
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from PIL import Image, ImageOps

from labeler.eval import fsutil
from labeler.eval.loading import (
    ImageRecord,
    Predictions,
    PredImage,
    decode_segmentation,
    load_predictions,
)
from labeler.preview.gallery import CategoryCount, GalleryItem, GallerySummary, render_gallery
from labeler.preview.overlay import (
    RGB,
    category_colors,
    display_size,
    palette_color,
    render_overlay,
)

log = logging.getLogger(__name__)

MAX_LEGEND_ENTRIES = 24
FAILED_THUMB_SIZE = 384
CANVAS_GRAY: RGB = (128, 128, 128)


@dataclass
class PreviewResult:
    """What ``build_preview`` wrote."""

    index_uri: str
    labeled: list[GalleryItem]
    failed: list[GalleryItem]
    summary: GallerySummary


def _load_source(
    uri: str, width: int, height: int, max_size: int | None
) -> tuple[Image.Image, str | None]:
    """Source image at the display size of (width, height); returns (image, note)."""
    target = display_size(width, height, max_size)
    img = Image.open(io.BytesIO(fsutil.read_bytes(uri)))
    note = None
    original = img.size
    img.draft("RGB", target)  # JPEG decodes at a reduced scale; a no-op for other formats
    if original != (width, height):
        transposed = ImageOps.exif_transpose(img)
        if (
            transposed is not None
            and (original[1], original[0]) == (width, height)
            and transposed.size != img.size
        ):
            img = transposed
        else:
            note = f"source is {original[0]}x{original[1]}, recorded size {width}x{height}: resized"
    img = img.convert("RGB")
    if img.size != target:
        img = img.resize(target, Image.BILINEAR)
    return img, note


def _encode_jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=88)
    return buf.getvalue()


def _layers(
    preds: Predictions, image: PredImage, colors: dict[int, RGB]
) -> tuple[list, list, list[CategoryCount]]:
    """(masks to draw, legend entries, category counts) of one image."""
    agnostic = preds.is_class_agnostic
    masks = []
    counts: Counter = Counter(int(a["category_id"]) for a in image.annotations)
    for rank, ann in enumerate(image.annotations):
        color = (
            palette_color(rank)
            if agnostic
            else colors.get(int(ann["category_id"]), palette_color(0))
        )
        masks.append((ann, color))
    categories = [
        CategoryCount(
            name=str(preds.categories.get(cid, {}).get("name", f"category {cid}")),
            count=n,
            color=palette_color(0) if agnostic else colors.get(cid, palette_color(0)),
        )
        for cid, n in sorted(counts.items())
    ]
    if agnostic:
        legend = [(f"segment {rank + 1}", color) for rank, (_, color) in enumerate(masks)]
    else:
        legend = [(f"{c.name} ({c.count})", c.color) for c in categories]
    if len(legend) > MAX_LEGEND_ENTRIES:
        extra = len(legend) - MAX_LEGEND_ENTRIES + 1
        legend = legend[: MAX_LEGEND_ENTRIES - 1] + [(f"+{extra} more", (255, 255, 255))]
    return masks, legend, categories


def _render_labeled(
    preds: Predictions,
    record: ImageRecord,
    image: PredImage | None,
    rank: int,
    out_uri: str,
    colors: dict[int, RGB],
    max_size: int,
    alpha: float,
) -> GalleryItem:
    uri = image.uri if image is not None else record.uri
    if image is None:
        return GalleryItem(
            record.image_id, uri, "labeled", note="labeled in images.parquet but not in coco.json"
        )
    masks, legend, categories = _layers(preds, image, colors)
    notes = []
    try:
        source, note = _load_source(uri, image.width, image.height, max_size)
        if note:
            notes.append(note)
    except Exception as exc:  # noqa: BLE001 - any read/decode failure: draw on gray
        source = Image.new("RGB", display_size(image.width, image.height, max_size), CANVAS_GRAY)
        notes.append(f"source image not readable ({type(exc).__name__}): masks on gray")
    drawn = [
        (decode_segmentation(ann["segmentation"], image.height, image.width), color)
        for ann, color in masks
    ]
    overlay = render_overlay(source, drawn, legend, alpha=alpha, max_size=max_size)
    name = f"overlays/{rank:05d}_{image.image_id}.jpg"
    fsutil.write_bytes(fsutil.join(out_uri, name), _encode_jpeg(overlay))
    if record.n_annotations is not None and int(record.n_annotations) != len(image.annotations):
        notes.append(f"images.parquet says {record.n_annotations} annotations")
    return GalleryItem(
        image_id=image.image_id,
        uri=uri,
        status="labeled",
        n_annotations=len(image.annotations),
        categories=categories,
        href=name,
        width=overlay.width,
        height=overlay.height,
        note="; ".join(notes) or None,
    )


def _render_failed(record: ImageRecord, rank: int, out_uri: str) -> GalleryItem:
    item = GalleryItem(record.image_id, record.uri, "failed", reason=record.reason)
    try:
        img = Image.open(io.BytesIO(fsutil.read_bytes(record.uri)))
        img.draft("RGB", (FAILED_THUMB_SIZE, FAILED_THUMB_SIZE))
        img = img.convert("RGB")
        img.thumbnail((FAILED_THUMB_SIZE, FAILED_THUMB_SIZE))
    except Exception:  # noqa: BLE001 - an unreadable source just gets no thumbnail
        return item
    name = f"overlays/failed_{rank:05d}.jpg"
    fsutil.write_bytes(fsutil.join(out_uri, name), _encode_jpeg(img))
    item.href, item.width, item.height = name, img.width, img.height
    return item


def _select(records: Sequence[ImageRecord], n: int, seed: int | None) -> list[ImageRecord]:
    if seed is None or len(records) <= n:
        return list(records[:n])
    picked = sorted(random.Random(seed).sample(range(len(records)), n))
    return [records[i] for i in picked]


def build_preview(
    output_uri: str,
    n: int = 50,
    only_failed: bool = False,
    out_uri: str | None = None,
    max_size: int = 768,
    alpha: float = 0.45,
    seed: int | None = None,
    workers: int = 4,
) -> PreviewResult:
    """Write overlays and ``index.html`` for the output at ``output_uri``.

    Args:
        output_uri: the ``--output`` of a run (any fsspec URI).
        n: at most this many labeled overlays, and at most this many failed entries.
        only_failed: list failed images only.
        out_uri: destination folder (default ``OUTPUT/preview``).
        max_size: longer side of an overlay's image part.
        alpha: mask fill opacity.
        seed: pick a seeded random sample instead of the first ``n``.
        workers: threads rendering overlays (reads are I/O bound).
    """
    preds = load_predictions(output_uri, require_coco=False)
    if not preds.records and not preds.images:
        from labeler.eval.loading import EvalInputError

        raise EvalInputError(
            f"no images.parquet or coco.json in {output_uri}: is it the --output of a labeler run?"
        )
    out_uri = out_uri or fsutil.join(output_uri, "preview")
    colors = category_colors(list(preds.categories))
    by_uri = {im.uri: im for im in preds.images.values()}

    labeled_records = [r for r in preds.records if r.status == "labeled"]
    failed_records = [r for r in preds.records if r.status == "failed"]
    all_counts: Counter = Counter(int(a["category_id"]) for a in preds.coco.get("annotations", []))
    summary = GallerySummary(
        output_uri=output_uri,
        n_images=len(preds.records),
        n_labeled=len(labeled_records),
        n_failed=len(failed_records),
        n_annotations=len(preds.coco.get("annotations", [])),
        failure_reasons=Counter(r.reason or "" for r in failed_records),
        categories=[
            CategoryCount(
                str(preds.categories[cid].get("name", cid)), all_counts.get(cid, 0), colors[cid]
            )
            for cid in sorted(preds.categories)
        ],
        class_agnostic=preds.is_class_agnostic,
    )

    def find(record: ImageRecord) -> PredImage | None:
        if record.image_id is not None and record.image_id in preds.images:
            return preds.images[record.image_id]
        return by_uri.get(record.uri)

    labeled_items: list[GalleryItem] = []
    if not only_failed:
        chosen = _select(labeled_records, n, seed)
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            labeled_items = list(
                pool.map(
                    lambda job: _render_labeled(
                        preds, job[1], find(job[1]), job[0], out_uri, colors, max_size, alpha
                    ),
                    enumerate(chosen),
                )
            )
    failed_chosen = _select(failed_records, n, seed)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        failed_items = list(
            pool.map(lambda job: _render_failed(job[1], job[0], out_uri), enumerate(failed_chosen))
        )

    page = render_gallery(summary, labeled_items, failed_items, show_labeled=not only_failed)
    index_uri = fsutil.join(out_uri, "index.html")
    fsutil.write_text(index_uri, page)
    return PreviewResult(
        index_uri=index_uri, labeled=labeled_items, failed=failed_items, summary=summary
    )
