"""Render an evaluation report (the dict built by ``labeler.eval.evaluate.evaluate``).

* ``to_json``: the report as JSON; metric values are fractions in [0, 1], undefined values
  ``null``.
* ``format_table``: plain-text tables for the terminal, values in percent with 2 decimals.
* ``to_markdown``: the same tables in Markdown, values in percent.
"""

from __future__ import annotations

import json
import math
from typing import Any

PIXEL_PROTOCOLS = ("miou", "slime", "hungarian", "hungarian-dataset")


def to_json(report: dict[str, Any]) -> str:
    """Serialise the report (NaN/inf become null)."""

    def clean(x: Any) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x

    return json.dumps(clean(report), indent=2, ensure_ascii=False) + "\n"


def pct(value: Any) -> str:
    """Percent with 2 decimals, ``-`` for missing values."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{100.0 * float(value):.2f}"


def summary_rows(report: dict[str, Any]) -> list[list[str]]:
    """One row per protocol: protocol, mIoU, pixel accuracy, other numbers."""
    rows = []
    for name, entry in report["protocols"].items():
        if name == "coco-ap":
            other = " ".join(
                f"{k} {pct(entry.get(k))}"
                for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")
            )
            if entry.get("class_agnostic"):
                other += " (class-agnostic)"
            rows.append([name, "-", "-", other])
            continue
        other = ""
        if name == "miou":
            other = f"mAcc {pct(entry.get('mean_accuracy'))}"
        elif name == "slime":
            other = f"image-mean mIoU {pct(entry.get('mean_image_mIoU'))}"
        rows.append([name, pct(entry.get("mIoU")), pct(entry.get("pixel_accuracy")), other])
    return rows


def class_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Per-class IoU table: one column per pixel protocol that ran, plus GT image/pixel counts."""
    protocols = [p for p in PIXEL_PROTOCOLS if p in report["protocols"]]
    headers = ["class"] + [f"{p} IoU" for p in protocols]
    miou = report["protocols"].get("miou")
    slime = report["protocols"].get("slime")
    if miou:
        headers.append("GT pixels")
    if slime:
        headers.append("GT images")
    rows = []
    for name in report["classes"]:
        row = [name] + [pct(report["protocols"][p]["per_class"][name]["iou"]) for p in protocols]
        if miou:
            row.append(str(miou["per_class"][name]["gt_pixels"]))
        if slime:
            row.append(str(slime["per_class"][name]["n_images"]))
        rows.append(row)
    return headers, rows


def _text_table(headers: list[str], rows: list[list[str]], left_last: bool = False) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]

    def line(cells: list[str]) -> str:
        out = [cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        if left_last and len(cells) > 1:
            out[-1] = cells[-1].ljust(widths[-1])
        return "  ".join(out).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), sep] + [line(r) for r in rows])


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(headers: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(_md_cell(h) for h in headers) + " |"]
    out.append("|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|")
    out.extend("| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows)
    return "\n".join(out)


def _images_line(report: dict[str, Any]) -> str:
    im = report["images"]
    return (
        f"images: {im['evaluated']} evaluated, {im['gt_without_prediction']} ground-truth images without "
        f"prediction, {im['predictions_without_gt']} predictions without ground truth, "
        f"{im['failed_in_run']} failed in the run"
    )


def format_table(report: dict[str, Any]) -> str:
    """Terminal rendering: header, protocol summary and per-class IoU (percent)."""
    parts = [
        (
            f"labeler eval: {report['pred']} vs {report['gt']} ({report['gt_format']} ground truth, "
            f"{report['prediction_kind']} predictions, {report['num_classes']} classes)"
        ),
        _images_line(report),
        "",
        _text_table(
            ["protocol", "mIoU %", "pixel acc %", "other (%)"], summary_rows(report), left_last=True
        ),
    ]
    headers, rows = class_rows(report)
    if len(headers) > 1 and rows:
        parts += ["", _text_table(headers, rows)]
    for w in report.get("warnings", []):
        parts.append(f"warning: {w}")
    return "\n".join(parts) + "\n"


def to_markdown(report: dict[str, Any]) -> str:
    """Markdown rendering: inputs, protocol definitions, summary and per-class tables."""
    lines = [
        "# labeler eval",
        "",
        f"- predictions: `{report['pred']}` ({report['prediction_kind']})",
        (
            f"- ground truth: `{report['gt']}` ({report['gt_format']}, {report['num_classes']} classes, "
            f"ignore index {report['ignore_index']})"
        ),
        f"- unannotated predicted pixels: {report['unannotated_pixels']}",
    ]
    mapping = report.get("class_mapping")
    if mapping:
        pairs = ", ".join(f"{k} → {v}" for k, v in mapping["categories"].items())
        lines.append(f"- category mapping ({mapping['rule']}): {pairs or 'none'}")
        if mapping["unmapped"]:
            lines.append(f"- unmapped categories: {', '.join(mapping['unmapped'])}")
        if mapping.get("unnamed"):
            lines.append(f"- unnamed segments (scored as unannotated): {', '.join(mapping['unnamed'])}")
    lines += [f"- {_images_line(report)}", "", "## Summary (percent)", ""]
    lines.append(_md_table(["protocol", "mIoU", "pixel acc", "other"], summary_rows(report)))
    headers, rows = class_rows(report)
    if len(headers) > 1 and rows:
        lines += ["", "## Per-class IoU (percent)", "", _md_table(headers, rows)]
    lines += ["", "## Protocols", ""]
    for name, entry in report["protocols"].items():
        lines.append(f"- **{name}**: {entry['description']}")
        if "assignment" in entry:
            lines.append(
                "  Assignment (class → predicted id): "
                + ", ".join(f"{k} → {v}" for k, v in entry["assignment"].items())
            )
    if report.get("warnings"):
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in report["warnings"]]
    return "\n".join(lines) + "\n"
