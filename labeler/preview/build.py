"""Build ``OUTPUT/preview/``: overlay images and the static gallery ``index.html``.

Selection: images are taken in ``images.parquet`` order (or a seeded random sample with
``seed``); at most ``n`` labeled images get an overlay and at most ``n`` failed images are
listed. ``only_failed`` lists failures only. Files written (any fsspec URI):

* ``<out>/overlays/<rank>_<image_id>.jpg``: overlay with legend (labeled images);
* ``<out>/overlays/failed_<rank>.jpg``: plain thumbnail of a failed image's source, when readable;
* ``<out>/index.html``: the gallery, linking to the files above with relative paths.

Sources are read and decoded exactly as ``labeler run`` reads them (:mod:`labeler.io.reading`
and :func:`labeler.io.decode.decode_image`: files or rows of a Parquet file of image bytes,
upright, alpha on white), with the same storage options. A source image that cannot be read does
not stop the preview: its masks are drawn on a gray canvas and the card says why. A source whose
upright size differs from the recorded ``width``/``height`` (changed since the run) is resized to
the recorded size (noted on the card). Everything is written through :class:`labeler.io.folders.Folder`.
"""

from __future__ import annotations

import io
import logging
import random
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from PIL import Image

from labeler.eval.loading import (
    ImageRecord,
    Predictions,
    PredImage,
    decode_segmentation,
    load_predictions,
)
from labeler.io.decode import decode_image
from labeler.io.folders import Folder
from labeler.io.reading import read_image_bytes
from labeler.io.uris import join_uri
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


def _decode_source(uri: str, storage_options: dict | None) -> Image.Image:
    """The source image at ``uri`` (a file or a Parquet row URI), upright RGB, as the run saw it."""
    data = read_image_bytes(uri, storage_options=storage_options)
    return Image.fromarray(decode_image(data, min_side=1).pixels)


def _load_source(
    uri: str, width: int, height: int, max_size: int | None, storage_options: dict | None
) -> tuple[Image.Image, str | None]:
    """Source image at the display size of (width, height); returns (image, note)."""
    target = display_size(width, height, max_size)
    img = _decode_source(uri, storage_options)
    note = None
    if img.size != (width, height):
        note = f"source is {img.width}x{img.height}, recorded size {width}x{height}: resized"
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
    image: PredImage,
    rank: int,
    out: Folder,
    colors: dict[int, RGB],
    max_size: int,
    alpha: float,
    storage_options: dict | None,
) -> GalleryItem:
    uri = image.uri
    masks, legend, categories = _layers(preds, image, colors)
    notes = []
    try:
        source, note = _load_source(uri, image.width, image.height, max_size, storage_options)
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
    out.write_bytes(name, _encode_jpeg(overlay))
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


def _render_failed(
    record: ImageRecord, rank: int, out: Folder, storage_options: dict | None
) -> GalleryItem:
    item = GalleryItem(record.image_id, record.uri, "failed", reason=record.reason)
    try:
        img = _decode_source(record.uri, storage_options)
        img.thumbnail((FAILED_THUMB_SIZE, FAILED_THUMB_SIZE))
    except Exception:  # noqa: BLE001 - an unreadable source just gets no thumbnail
        return item
    name = f"overlays/failed_{rank:05d}.jpg"
    out.write_bytes(name, _encode_jpeg(img))
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
    storage_options: dict | None = None,
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
        storage_options: fsspec options (endpoint, credentials) for the output, the sources
            and ``out_uri``, as for ``labeler run``.
    """
    preds = load_predictions(output_uri, storage_options=storage_options)
    out = Folder(out_uri or join_uri(output_uri, "preview"), storage_options)
    colors = category_colors(list(preds.categories))

    labeled_records = [r for r in preds.records if r.status == "labeled"]
    failed_records = [r for r in preds.records if r.status == "failed"]
    all_counts = preds.reader.category_counts()
    summary = GallerySummary(
        output_uri=output_uri,
        n_images=len(preds.records),
        n_labeled=len(labeled_records),
        n_failed=len(failed_records),
        n_annotations=sum(all_counts.values()),
        failure_reasons=Counter(r.reason or "" for r in failed_records),
        categories=[
            CategoryCount(
                str(preds.categories[cid].get("name", cid)), all_counts.get(cid, 0), colors[cid]
            )
            for cid in sorted(preds.categories)
        ],
        class_agnostic=preds.is_class_agnostic,
    )

    labeled_items: list[GalleryItem] = []
    if not only_failed:
        chosen = _select(labeled_records, n, seed)
        annotated = {image.image_id: image for image in preds.annotated(r.image_id for r in chosen)}
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            labeled_items = list(
                pool.map(
                    lambda job: _render_labeled(
                        preds, job[1], annotated[job[1].image_id], job[0], out, colors,
                        max_size, alpha, storage_options,
                    ),
                    enumerate(chosen),
                )
            )
    failed_chosen = _select(failed_records, n, seed)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        failed_items = list(
            pool.map(
                lambda job: _render_failed(job[1], job[0], out, storage_options),
                enumerate(failed_chosen),
            )
        )

    page = render_gallery(summary, labeled_items, failed_items, show_labeled=not only_failed)
    out.write_bytes("index.html", page.encode("utf-8"))
    index_uri = out.uri_of("index.html")
    return PreviewResult(
        index_uri=index_uri, labeled=labeled_items, failed=failed_items, summary=summary
    )
