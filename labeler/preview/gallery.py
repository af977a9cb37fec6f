"""Static HTML gallery of an output: thumbnails, per-image counts and categories, failures.

The page is a single self-contained ``index.html`` (inline CSS, no JavaScript, no external
resources) whose images are *relative* links to files next to it (``overlays/...``), so the
folder can be copied anywhere, or opened from object storage through any static file server.
All text coming from the data (URIs, category names, failure reasons) is HTML-escaped.

Structure (stable, tests and scripts may rely on it):

* ``#summary`` with ``<dd>`` values ``#n-images``, ``#n-labeled``, ``#n-failed``,
  ``#n-annotations`` and a ``table.reasons`` of failure counts by reason;
* ``section#labeled`` holding one ``figure.card.labeled`` per shown image, with
  ``img.thumb`` (the overlay), ``.name``, ``.n-annotations`` and ``ul.cats > li`` per category;
* ``section#failed`` holding one ``figure.card.failed`` per shown failure, with ``.name``,
  ``p.reason`` and ``img.thumb.source`` when the source image could be read.
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from labeler.preview.overlay import RGB, hex_color


@dataclass
class CategoryCount:
    """One category shown on a card."""

    name: str
    count: int
    color: RGB


@dataclass
class GalleryItem:
    """One card of the gallery."""

    image_id: int | None
    uri: str
    status: str
    reason: str | None = None
    n_annotations: int = 0
    categories: list[CategoryCount] = field(default_factory=list)
    href: str | None = None
    """Relative link to the overlay (labeled) or source thumbnail (failed); None if unavailable."""
    width: int | None = None
    height: int | None = None
    note: str | None = None
    """Problem met while rendering the preview (e.g. source unreadable)."""


@dataclass
class GallerySummary:
    """Counts over the whole output (not only the shown cards)."""

    output_uri: str
    n_images: int
    n_labeled: int
    n_failed: int
    n_annotations: int
    failure_reasons: Counter = field(default_factory=Counter)
    categories: list[CategoryCount] = field(default_factory=list)
    class_agnostic: bool = False


CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #1a1a1a; background: #fff; }
h1 { margin: 0 0 .25rem 0; font-size: 1.5rem; }
.source { color: #555; margin: 0 0 1rem 0; word-break: break-all; }
#summary dl { display: grid; grid-template-columns: max-content max-content; gap: .2rem 1rem; }
#summary dt { font-weight: 600; }
#summary dd { margin: 0; }
table.reasons { border-collapse: collapse; margin: .5rem 0 1rem 0; }
table.reasons td, table.reasons th { border: 1px solid #ccc; padding: .2rem .5rem; text-align: left; }
.legend span.chip, ul.cats li { display: inline-flex; align-items: center; gap: .3rem; margin-right: .6rem; }
.swatch { display: inline-block; width: .9rem; height: .9rem; border: 1px solid #333; }
.grid { display: flex; flex-wrap: wrap; gap: 1rem; }
figure.card { margin: 0; width: 260px; border: 1px solid #ccc; border-radius: 6px; padding: .5rem;
  background: #fafafa; }
figure.card.failed { border-color: #c0392b; background: #fff5f4; }
img.thumb { width: 100%; height: auto; display: block; background: #eee; }
.name { font-weight: 600; font-size: .9rem; word-break: break-all; margin-top: .3rem; }
.count { font-size: .85rem; margin: .2rem 0; }
ul.cats { list-style: none; padding: 0; margin: .2rem 0; font-size: .8rem; }
p.reason { color: #a93226; font-family: ui-monospace, monospace; font-size: .8rem; white-space: pre-wrap;
  word-break: break-word; margin: .3rem 0; }
.note { color: #8a6d3b; font-size: .8rem; }
.placeholder { height: 120px; display: flex; align-items: center; justify-content: center; color: #777;
  background: #eee; font-size: .85rem; }
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _display_name(uri: str) -> str:
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    return name or uri


def _swatch(color: RGB) -> str:
    return f'<span class="swatch" style="background:{hex_color(color)}"></span>'


def _category_list(categories: Sequence[CategoryCount]) -> str:
    if not categories:
        return ""
    items = "".join(
        f'<li data-category="{_e(c.name)}" data-count="{c.count}">{_swatch(c.color)}'
        f'<span class="cat-name">{_e(c.name)}</span> <span class="cat-count">×{c.count}</span></li>'
        for c in categories
    )
    return f'<ul class="cats">{items}</ul>'


def _picture(item: GalleryItem, image_class: str, placeholder: str) -> str:
    """A card's picture: its image linked to itself, or ``placeholder`` when it has none."""
    if not item.href:
        return f'<div class="placeholder">{placeholder}</div>'
    size = f' width="{item.width}" height="{item.height}"' if item.width and item.height else ""
    return (
        f'<a href="{_e(item.href)}"><img class="{image_class}" src="{_e(item.href)}" '
        f'alt="{_e(_display_name(item.uri))}" loading="lazy"{size}></a>'
    )


def _labeled_card(item: GalleryItem) -> str:
    attrs = (
        f'class="card labeled" data-image-id="{_e(item.image_id)}" data-status="labeled" '
        f'data-annotations="{item.n_annotations}"'
    )
    picture = _picture(item, "thumb", "no preview")
    word = "annotation" if item.n_annotations == 1 else "annotations"
    note = f'<div class="note">{_e(item.note)}</div>' if item.note else ""
    return (
        f"<figure {attrs}>{picture}<figcaption>"
        f'<div class="name" title="{_e(item.uri)}">{_e(_display_name(item.uri))}</div>'
        f'<div class="count"><span class="n-annotations">{item.n_annotations}</span> {word}</div>'
        f"{_category_list(item.categories)}{note}</figcaption></figure>"
    )


def _failed_card(item: GalleryItem) -> str:
    attrs = f'class="card failed" data-image-id="{_e(item.image_id)}" data-status="failed"'
    picture = _picture(item, "thumb source", "source not readable")
    reason = item.reason if item.reason else "(no reason recorded)"
    return (
        f"<figure {attrs}>{picture}<figcaption>"
        f'<div class="name" title="{_e(item.uri)}">{_e(_display_name(item.uri))}</div>'
        f'<p class="reason">{_e(reason)}</p></figcaption></figure>'
    )


def render_gallery(
    summary: GallerySummary,
    labeled: Sequence[GalleryItem],
    failed: Sequence[GalleryItem],
    show_labeled: bool = True,
) -> str:
    """The gallery page as an HTML string."""
    reasons = "".join(
        f"<tr><td>{_e(reason or '(none)')}</td><td>{count}</td></tr>"
        for reason, count in summary.failure_reasons.most_common()
    )
    reasons_table = (
        f'<table class="reasons"><thead><tr><th>failure reason</th><th>images</th></tr></thead>'
        f"<tbody>{reasons}</tbody></table>"
        if reasons
        else ""
    )
    legend = ""
    if summary.categories and not summary.class_agnostic:
        chips = "".join(
            f'<span class="chip">{_swatch(c.color)}{_e(c.name)} ({c.count})</span>'
            for c in summary.categories
        )
        legend = f'<div class="legend"><strong>Categories:</strong> {chips}</div>'
    elif summary.class_agnostic:
        legend = '<div class="legend">Class-agnostic segments: each segment of an image has its own color.</div>'
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>labeler preview: {_e(summary.output_uri)}</title>",
        f"<style>{CSS}</style></head><body>",
        "<header>",
        "<h1>labeler preview</h1>",
        f'<p class="source">{_e(summary.output_uri)}</p>',
        '<section id="summary"><dl>',
        f'<dt>images</dt><dd id="n-images">{summary.n_images}</dd>',
        f'<dt>labeled</dt><dd id="n-labeled">{summary.n_labeled}</dd>',
        f'<dt>failed</dt><dd id="n-failed">{summary.n_failed}</dd>',
        f'<dt>annotations</dt><dd id="n-annotations">{summary.n_annotations}</dd>',
        "</dl>",
        reasons_table,
        legend,
        "</section></header><main>",
    ]
    if show_labeled:
        parts.append(
            f'<section id="labeled"><h2>Labeled images (showing {len(labeled)} of {summary.n_labeled})</h2>'
            f'<div class="grid">{"".join(_labeled_card(i) for i in labeled)}</div></section>'
        )
    parts.append(
        f'<section id="failed"><h2>Failed images (showing {len(failed)} of {summary.n_failed})</h2>'
        f'<div class="grid">{"".join(_failed_card(i) for i in failed)}</div></section>'
    )
    parts.append("</main></body></html>")
    return "\n".join(p for p in parts if p) + "\n"
