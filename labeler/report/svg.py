"""Bar charts as inline SVG: no plotting library, a few hundred bytes per chart.

Each bar is a ``<rect class="bar">`` with its value in ``data-value`` and a ``<title>`` tooltip
(label: value), so a browser shows the numbers on hover and a test reads them from the DOM.
"""

from __future__ import annotations

from xml.sax.saxutils import escape, quoteattr

WIDTH, HEIGHT = 640, 260
MARGIN_LEFT, MARGIN_BOTTOM, MARGIN_TOP = 48, 76, 12
#: the widest bar, pixels (a chart of one class is not one wall of colour)
MAX_STEP = 64
BAR_COLOUR = "#4363d8"


def bar_chart(chart_id: str, labels: list[str], values: list[int], x_title: str,
              y_title: str = "count", label_every: int = 1) -> str:
    """An SVG bar chart of ``values`` (one bar per label, left to right).

    Args:
        chart_id: the ``id`` of the ``<svg>`` element.
        labels: the bars' labels (every ``label_every``-th is written under the axis).
        values: the bars' heights (counts, >= 0).
        x_title, y_title: the axis titles.
    """
    plot_width = WIDTH - MARGIN_LEFT - 8
    plot_height = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    top = max(max(values, default=0), 1)
    step = min(plot_width / max(len(values), 1), MAX_STEP)
    parts = [(f'<svg id={quoteattr(chart_id)} class="plot" xmlns="http://www.w3.org/2000/svg" '
             f'width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img">'),
             (f'<line x1="{MARGIN_LEFT}" y1="{MARGIN_TOP + plot_height}" x2="{WIDTH - 8}" '
             f'y2="{MARGIN_TOP + plot_height}" stroke="#444"/>'),
             (f'<text x="{MARGIN_LEFT - 6}" y="{MARGIN_TOP + 10}" text-anchor="end" '
             f'font-size="11">{top}</text>'),
             (f'<text x="{MARGIN_LEFT - 6}" y="{MARGIN_TOP + plot_height}" text-anchor="end" '
             'font-size="11">0</text>'),
             (f'<text x="12" y="{MARGIN_TOP + plot_height / 2}" font-size="11" '
             f'transform="rotate(-90 12 {MARGIN_TOP + plot_height / 2})" '
             f'text-anchor="middle">{escape(y_title)}</text>'),
             (f'<text x="{MARGIN_LEFT + plot_width / 2}" y="{HEIGHT - 6}" font-size="12" '
             f'text-anchor="middle">{escape(x_title)}</text>')]
    for index, (label, value) in enumerate(zip(labels, values)):
        height = plot_height * value / top
        x = MARGIN_LEFT + index * step
        parts.append(
            f'<rect class="bar" data-value="{value}" x="{x + step * 0.1:.1f}" '
            f'y="{MARGIN_TOP + plot_height - height:.1f}" width="{step * 0.8:.1f}" '
            f'height="{height:.1f}" fill="{BAR_COLOUR}"><title>{escape(label)}: {value}</title>'
            "</rect>")
        if index % label_every == 0:
            centre = x + step / 2
            baseline = MARGIN_TOP + plot_height + 14
            parts.append(
                f'<text x="{centre:.1f}" y="{baseline}" font-size="10" text-anchor="end" '
                f'transform="rotate(-35 {centre:.1f} {baseline})">{escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)
