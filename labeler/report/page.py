"""The report's HTML page: a summary table and the plots of :class:`.stats.RunStats`."""

from __future__ import annotations

from html import escape

from labeler.report.stats import (
    AREA_BINS_PER_DECADE,
    AREA_LOW,
    MAX_SEGMENTS_BIN,
    SCORE_BIN,
    RunStats,
)
from labeler.report.svg import bar_chart

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 720px; }
table { border-collapse: collapse; margin-bottom: 16px; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
section { margin-bottom: 28px; }
p.note { color: #555; font-size: 13px; }
"""


def _segments_chart(stats: RunStats) -> str:
    top = max(stats.segments_per_image, default=0)
    counts = list(range(top + 1))
    labels = [f"{n}+" if n == MAX_SEGMENTS_BIN else str(n) for n in counts]
    return bar_chart("segments-per-image", labels,
                     [stats.segments_per_image.get(n, 0) for n in counts],
                     "annotations per labeled image", "images",
                     label_every=max(1, len(counts) // 20))


def _score_chart(stats: RunStats) -> str:
    labels = [f"{i * SCORE_BIN:.2f}-{(i + 1) * SCORE_BIN:.2f}" for i in range(len(stats.scores))]
    return bar_chart("scores", labels, stats.scores, "score", "annotations", label_every=2)


def _area_chart(stats: RunStats) -> str:
    def bound(index: int) -> str:
        return f"{10 ** (AREA_LOW + index / AREA_BINS_PER_DECADE):.0e}"

    labels = [f"{bound(i)}-{bound(i + 1)}" for i in range(len(stats.areas))]
    labels[0] = f"<{bound(1)}"
    return bar_chart("areas", labels, stats.areas, "mask area / image area (log bins)",
                     "annotations", label_every=2)


def _counter_chart(chart_id: str, counts, x_title: str, y_title: str) -> str:
    ranked = counts.most_common()
    return bar_chart(chart_id, [str(k) for k, _ in ranked], [v for _, v in ranked], x_title,
                     y_title)


def _table(rows: list[tuple[str, object]]) -> str:
    return "<table>" + "".join(
        f"<tr><th>{escape(str(k))}</th><td>{escape(str(v))}</td></tr>" for k, v in rows
    ) + "</table>"


def render_report(stats: RunStats, info: dict, output_uri: str) -> str:
    """The report page of an output (``info``: its COCO info block)."""
    summary = _table([
        ("output", output_uri), ("method", info.get("method", "")),
        ("model", info.get("model", "")), ("run id", info.get("run_id", "")),
        ("created", info.get("date_created", "")), ("images", stats.images),
        ("labeled", stats.labeled), ("failed", stats.failed),
        ("annotations", stats.annotations),
    ])
    sections = [
        ("segments-per-image", "Annotations per labeled image", _segments_chart(stats),
         "Images with 0 were labeled and got no mask."),
        ("scores", "Score distribution", _score_chart(stats),
         ("What a score means per method, and how to choose labeler export --min-score: "
         "docs/outputs.md, 'What a score means'.")),
        ("areas", "Mask area distribution", _area_chart(stats),
         "Specks sit in the left bins: labeler export --min-area removes them."),
        ("per-class", "Annotations per class",
         _counter_chart("per-class", stats.per_class, "class", "annotations"), ""),
        ("failures", "Failed images by reason",
         _counter_chart("failures", stats.failures, "reason", "images")
         if stats.failures else '<p id="no-failures">No failed images.</p>',
         "labeler status OUTPUT and images.parquet give each failed image and its reason."),
    ]
    body = "".join(
        f'<section id="section-{key}"><h2>{escape(title)}</h2>{chart}'
        + (f'<p class="note">{escape(note)}</p>' if note else "") + "</section>"
        for key, title, chart, note in sections
    )
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>labeler report: {escape(output_uri)}</title><style>{_STYLE}</style>"
            f"</head><body><h1>labeler report</h1>{summary}{body}</body></html>\n")
