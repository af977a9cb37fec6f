"""Overlay drawing with PIL: masks colored per category, boundaries, and a legend strip.

Rendering rules:

* The image is scaled so that its longer side is at most ``max_size`` (never enlarged); masks
  are scaled to the same size with nearest neighbour.
* Inside a mask, a pixel becomes ``(1 - alpha) * image + alpha * color`` (rounded); the mask's
  boundary (mask pixels within ``thickness`` 4-neighbour steps of a non-mask pixel) is painted
  in the solid color. Masks are drawn in the given order, so later ones cover earlier ones.
* The legend is a strip appended *below* the image (the image itself is never hidden): one
  color swatch and label per entry, wrapped over as many rows as needed.
* Colors come from ``PALETTE``, a fixed list: class-aware outputs color by category (the
  category's rank among the output's category ids), class-agnostic outputs (DiffSeg's single
  ``segment`` category) color each segment by its rank within the image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

RGB = tuple[int, int, int]

# Hand-picked, well separated, saturated colors (no gray, no near-white), in the order used.
PALETTE: tuple[RGB, ...] = (
    (228, 26, 28),
    (55, 126, 220),
    (40, 180, 70),
    (255, 140, 0),
    (150, 60, 200),
    (0, 200, 200),
    (240, 60, 170),
    (190, 210, 20),
    (140, 90, 40),
    (0, 110, 110),
    (255, 210, 40),
    (90, 90, 230),
    (120, 200, 140),
    (200, 120, 120),
    (100, 0, 140),
    (20, 60, 120),
)

LEGEND_BACKGROUND: RGB = (250, 250, 250)
LEGEND_TEXT: RGB = (20, 20, 20)


def palette_color(index: int) -> RGB:
    """Color of entry ``index`` (the palette repeats)."""
    return PALETTE[index % len(PALETTE)]


def hex_color(color: RGB) -> str:
    """``#rrggbb`` of an RGB tuple."""
    return "#{:02x}{:02x}{:02x}".format(*color)


def category_colors(category_ids: Sequence[int]) -> dict[int, RGB]:
    """Category id -> color, by rank in ascending id order (stable across images of an output)."""
    return {cid: palette_color(i) for i, cid in enumerate(sorted({int(c) for c in category_ids}))}


def mask_boundary(mask: np.ndarray, thickness: int = 1) -> np.ndarray:
    """Mask pixels within ``thickness`` 4-neighbour steps of a pixel outside the mask.

    Pixels on the image border count as next to the outside.
    """
    mask = np.asarray(mask, dtype=bool)
    eroded = mask.copy()
    for _ in range(max(1, thickness)):
        padded = np.pad(eroded, 1, constant_values=False)
        eroded = (
            padded[1:-1, 1:-1]
            & padded[:-2, 1:-1]
            & padded[2:, 1:-1]
            & padded[1:-1, :-2]
            & padded[1:-1, 2:]
        )
    return mask & ~eroded


def display_size(width: int, height: int, max_size: int | None) -> tuple[int, int]:
    """(width, height) scaled so the longer side is at most ``max_size`` (never enlarged)."""
    if not max_size or max(width, height) <= max_size:
        return width, height
    scale = max_size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize_mask(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """Nearest-neighbour resize of a bool mask to (height, width)."""
    if mask.shape == (height, width):
        return mask.astype(bool)
    img = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(img.resize((width, height), Image.NEAREST)) > 127


FONT_CANDIDATES = ("DejaVuSans.ttf", "LiberationSans-Regular.ttf", "Arial.ttf")


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """A system TrueType font when one is found (wider glyph coverage), else Pillow's default."""
    for name in FONT_CANDIDATES:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without the size argument
        return ImageFont.load_default()


def draw_legend(width: int, entries: Sequence[tuple[str, RGB]], font_size: int = 14) -> Image.Image:
    """Legend strip of the given width: a swatch and a label per entry, wrapped to rows."""
    font = _font(font_size)
    pad = max(4, font_size // 2)
    swatch = font_size
    line_h = font_size + pad
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    rows: list[list[tuple[int, str, RGB]]] = [[]]
    x = pad
    for label, color in entries:
        text_w = int(probe.textlength(label, font=font))
        item_w = swatch + pad // 2 + text_w + 2 * pad
        if rows[-1] and x + item_w > width:
            rows.append([])
            x = pad
        rows[-1].append((x, label, color))
        x += item_w
    height = pad + len(rows) * line_h if entries else 0
    strip = Image.new("RGB", (width, max(height, 1)), LEGEND_BACKGROUND)
    draw = ImageDraw.Draw(strip)
    for r, row in enumerate(rows):
        y = pad + r * line_h
        for x0, label, color in row:
            draw.rectangle(
                [x0, y, x0 + swatch - 1, y + swatch - 1], fill=color, outline=LEGEND_TEXT
            )
            draw.text(
                (x0 + swatch + pad // 2, y + swatch // 2),
                label,
                fill=LEGEND_TEXT,
                font=font,
                anchor="lm",
            )
    return strip


def render_overlay(
    image: Image.Image,
    masks: Sequence[tuple[np.ndarray, RGB]],
    legend: Sequence[tuple[str, RGB]] = (),
    alpha: float = 0.45,
    max_size: int | None = 768,
    thickness: int | None = None,
) -> Image.Image:
    """Draw masks (each with its color) over ``image`` and append a legend strip below.

    Args:
        image: the original image (any mode; converted to RGB).
        masks: (bool mask at the image's size or any size, color) pairs, drawn in order.
        legend: (label, color) entries; no strip when empty.
        alpha: fill opacity inside masks.
        max_size: longer side of the result's image part (None: keep the size).
        thickness: boundary thickness in pixels (default: 1 per 300 px of the longer side).

    Returns:
        RGB image of width w and height h + legend height, where (w, h) is the display size.
    """
    rgb = image.convert("RGB")
    w, h = display_size(rgb.width, rgb.height, max_size)
    if (w, h) != rgb.size:
        rgb = rgb.resize((w, h), Image.BILINEAR)
    base = np.asarray(rgb, dtype=np.float32)
    out = base.copy()
    t = thickness if thickness is not None else max(1, round(max(w, h) / 300))
    for mask, color in masks:
        m = resize_mask(np.asarray(mask), w, h)
        if not m.any():
            continue
        c = np.asarray(color, dtype=np.float32)
        out[m] = (1.0 - alpha) * base[m] + alpha * c
        out[mask_boundary(m, t)] = c
    result = Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))
    if not legend:
        return result
    strip = draw_legend(max(w, 160), legend, font_size=max(11, min(18, w // 40)))
    canvas = Image.new("RGB", (max(w, strip.width), h + strip.height), LEGEND_BACKGROUND)
    canvas.paste(result, (0, 0))
    canvas.paste(strip, (0, h))
    return canvas
