"""``cvat-images``: CVAT for images 1.1 XML with native ``mask`` shapes and the score.

::

    annotations.xml     <annotations><version>1.1</version><meta>labels</meta><image>...</annotations>
    images/<file_name>  the images (with ``--images copy|link``)

Each annotation is one ``<mask>`` shape: its bounding box (``left``, ``top``, ``width``,
``height``, inclusive pixel box) and CVAT's RLE of the mask cropped to that box (run lengths of
the crop read row by row, starting with a run of background pixels, which is 0 when the first
pixel is inside the mask). The score is the ``score`` attribute, declared per label as a
``number`` from 0 to 1, so reviewers sort and filter by it; it is written with
:data:`SCORE_DIGITS` decimals. Zip the folder and import it into a task as "CVAT for images 1.1",
or load it with Datumaro (``dm.Dataset.import_from(DIR, "cvat")``).
"""

from __future__ import annotations

from xml.sax.saxutils import escape, quoteattr

import numpy as np

from labeler.output.exporters.base import ExportContext, Exporter
from labeler.output.exporters.source import ExportImage
from labeler.output.rle import decode_mask

ANNOTATIONS_FILE = "annotations.xml"
#: decimals of the score attribute (CVAT's number attribute: min 0, max 1, this step)
SCORE_DIGITS = 4
#: label colours, cycled (CVAT shows masks in their label's colour)
_COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6",
            "#bfef45", "#fabed4", "#469990", "#dcbeff", "#9a6324")


def cvat_mask_rle(mask: np.ndarray) -> tuple[tuple[int, int, int, int], list[int]]:
    """CVAT's mask encoding of an (H, W) 0/1 mask with at least one pixel set.

    Returns:
        ``(left, top, width, height)`` of the inclusive pixel box, and the run lengths of the
        box's pixels in row-major order, alternating background / mask, background first.
    """
    ys, xs = np.nonzero(mask)
    left, top = int(xs.min()), int(ys.min())
    width, height = int(xs.max()) - left + 1, int(ys.max()) - top + 1
    flat = mask[top : top + height, left : left + width].astype(bool).ravel()
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    return (left, top, width, height), ([0] + runs if flat[0] else runs)


class CvatImagesExporter(Exporter):
    """``cvat-images``: ``annotations.xml`` streamed image by image."""

    def __init__(self, context: ExportContext) -> None:
        super().__init__(context)
        self.names = {c["id"]: c["name"] for c in context.categories}
        self._frame = 0
        self._handle = self.open_file(ANNOTATIONS_FILE)
        self._write('<?xml version="1.0" encoding="utf-8"?>\n<annotations>\n'
                    "  <version>1.1</version>\n  <meta>\n    <task>\n"
                    f"      <name>{escape(context.info.get('description') or 'labeler')}</name>\n"
                    "      <mode>annotation</mode>\n      <labels>\n"
                    + "".join(self._label(index, c) for index, c in enumerate(context.categories))
                    + "      </labels>\n    </task>\n  </meta>\n")

    @staticmethod
    def _label(index: int, category: dict) -> str:
        return (
            f"        <label>\n          <name>{escape(category['name'])}</name>\n"
            f"          <color>{_COLOURS[index % len(_COLOURS)]}</color>\n"
            "          <type>mask</type>\n          <attributes>\n            <attribute>\n"
            "              <name>score</name>\n              <mutable>False</mutable>\n"
            "              <input_type>number</input_type>\n"
            "              <default_value>0</default_value>\n"
            f"              <values>0\n1\n{10 ** -SCORE_DIGITS:.{SCORE_DIGITS}f}</values>\n"
            "            </attribute>\n          </attributes>\n        </label>\n"
        )

    def _write(self, text: str) -> None:
        self._handle.write(text.encode("utf-8"))

    def add(self, image: ExportImage, annotations: list[dict]) -> None:
        shapes = []
        for annotation in annotations:
            mask = decode_mask(annotation["segmentation"])
            if not mask.any():
                continue
            (left, top, width, height), runs = cvat_mask_rle(mask)
            shapes.append(
                f"    <mask label={quoteattr(self.names[annotation['category_id']])} "
                f'source="auto" occluded="0" rle="{", ".join(map(str, runs))}" '
                f'left="{left}" top="{top}" width="{width}" height="{height}" z_order="0">\n'
                f'      <attribute name="score">'
                f"{round(float(annotation['score']), SCORE_DIGITS)}</attribute>\n    </mask>\n")
        self._write(f'  <image id="{self._frame}" name={quoteattr(image.file_name)} '
                    f'width="{image.width}" height="{image.height}">\n{"".join(shapes)}'
                    "  </image>\n")
        self._frame += 1

    def close(self) -> list[str]:
        self._write("</annotations>\n")
        return [ANNOTATIONS_FILE]
