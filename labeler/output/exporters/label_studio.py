"""``label-studio``: a tasks file to import into Label Studio, masks as pre-annotations.

``tasks.json`` is a list of tasks ``{"data": {"image": URL, ...}, "predictions": [...],
"meta": {...}}``, one per image. Each segment is one ``polygonlabels`` region (points in percent
of the image): its fragments smaller than ``fragment_min_area`` pixels are dropped (the largest
is always kept), the rest simplified with the tolerance and joined, holes included, by zero-width
cuts into one polygon (:mod:`.polygons`), so relabelling a segment in the UI is one click.
Every result carries the annotation's ``score``; the prediction (or, with ``as_annotations``,
the annotation) carries ``model_version`` and the image's mean score; ``meta`` holds each
region's ``area`` and ``score`` and their totals. ``labeling_config.xml`` is the matching
labeling interface (``<PolygonLabels name="label" toName="image">`` with the output's classes).

The image URL is ``image_url_prefix`` + the relative ``file_name``: a cloud or web prefix
(``s3://bucket/photos/``, ``https://host/photos/``) or Label Studio's local-files serving,
``/data/local-files/?d=photos/``, with ``LOCAL_FILES_DOCUMENT_ROOT`` the folder above ``photos``
(Label Studio serves only from a local storage below the document root, never at it). Without a
prefix (:func:`default_url_prefix`): the images placed with ``--images copy|link`` are
``/data/local-files/?d=images/`` (the document root is the export folder); a local image root
``/data/photos`` gives ``/data/local-files/?d=photos/`` (the document root is ``/data``); a
remote image root is its own URI; outputs without an image root (manifest and Parquet inputs)
keep each source URI.

``label-studio-brush`` writes each mask as one ``brushlabels`` result instead (Label Studio's
brush RLE, :mod:`.brush_rle`: exact, no tracing) with a ``<BrushLabels>`` interface.
"""

from __future__ import annotations

import posixpath
from xml.sax.saxutils import quoteattr

from labeler.output.exporters.base import ExportContext, Exporter, JsonArrayWriter
from labeler.output.exporters.brush_rle import encode_brush_rle
from labeler.output.exporters.long_names import original_name_field
from labeler.output.exporters.polygons import mask_polygons, polygon_area, single_polygon
from labeler.output.exporters.source import ExportImage
from labeler.output.rle import decode_mask

FROM_NAME = "label"
TO_NAME = "image"
LOCAL_FILES = "/data/local-files/?d="


def default_url_prefix(image_root: str | None, images_dir: str | None) -> str | None:
    """The image URL prefix without ``--image-url-prefix`` (``None``: each source URI)."""
    if images_dir is not None:
        return f"{LOCAL_FILES}{images_dir}/"
    if not image_root:
        return None
    if "://" in image_root and not image_root.startswith("file://"):
        return image_root.rstrip("/") + "/"
    return f"{LOCAL_FILES}{posixpath.basename(image_root.removeprefix('file://').rstrip('/'))}/"


class LabelStudioExporter(Exporter):
    """``label-studio``: tasks with ``polygonlabels`` pre-annotations."""

    #: the labeling interface's tag (its lower case is the results' ``type``)
    tag = "PolygonLabels"

    def __init__(self, context: ExportContext) -> None:
        super().__init__(context)
        self.names = {c["id"]: c["name"] for c in context.categories}
        self.model_version = f"labeler-{context.info.get('method')}-{context.info.get('run_id')}"
        self.url_prefix = (context.options.image_url_prefix
                           if context.options.image_url_prefix is not None
                           else default_url_prefix(context.info.get("image_root"),
                                                   context.images_dir))
        self._tasks = JsonArrayWriter(self.open_file("tasks.json"))
        self._tasks.raw("[")

    def _url(self, image: ExportImage) -> str:
        return image.uri if self.url_prefix is None else self.url_prefix + image.file_name

    def _results(self, image: ExportImage, annotation: dict) -> list[dict]:
        """One ``polygonlabels`` result for the segment: its kept fragments as one polygon."""
        fragments = mask_polygons(decode_mask(annotation["segmentation"]), self.context.tolerance)
        if not fragments:
            return []
        areas = [polygon_area(fragment) for fragment in fragments]
        floor = self.context.options.fragment_min_area
        kept = [f for f, area in zip(fragments, areas) if area >= floor]
        polygon = single_polygon(kept or [fragments[areas.index(max(areas))]])
        percent = polygon / [image.width, image.height] * 100.0
        return [{
            **self._result_base(image, annotation, str(annotation["id"])),
            "value": {
                "points": [[round(x, 4), round(y, 4)] for x, y in percent.tolist()],
                "closed": True,
                "polygonlabels": [self.names[annotation["category_id"]]],
            },
        }]

    def _result_base(self, image: ExportImage, annotation: dict, result_id: str) -> dict:
        return {
            "id": result_id,
            "from_name": FROM_NAME,
            "to_name": TO_NAME,
            "type": self.tag.lower(),
            "original_width": image.width,
            "original_height": image.height,
            "image_rotation": 0,
            "score": annotation["score"],
            "model_version": self.model_version,
        }

    def add(self, image: ExportImage, annotations: list[dict]) -> None:
        results = [r for annotation in annotations for r in self._results(image, annotation)]
        scores = [a["score"] for a in annotations]
        mean_score = sum(scores) / len(scores) if scores else 0.0
        labels = {"model_version": self.model_version, "score": mean_score, "result": results}
        if self.context.options.as_annotations:
            labels = {**labels, "ground_truth": False, "was_cancelled": False}
        self._tasks.item({
            "id": image.image_id,
            "data": {TO_NAME: self._url(image), "file_name": image.file_name,
                     "source_uri": image.uri, **original_name_field(image.original_name)},
            "annotations" if self.context.options.as_annotations else "predictions": [labels],
            "meta": {
                "area": sum(a["area"] for a in annotations),
                "score": mean_score,
                "regions": [{"id": str(a["id"]), "area": a["area"], "score": a["score"]}
                            for a in annotations],
            },
        })

    def close(self) -> list[str]:
        self._tasks.raw("\n]\n")
        labels = "".join(
            f"    <Label value={quoteattr(c['name'])}/>\n" for c in self.context.categories
        )
        config = (
            "<View>\n"
            f"  <Image name=\"{TO_NAME}\" value=\"${TO_NAME}\"/>\n"
            f"  <{self.tag} name=\"{FROM_NAME}\" toName=\"{TO_NAME}\">\n{labels}"
            f"  </{self.tag}>\n</View>\n"
        )
        self.context.out.write_bytes("labeling_config.xml", config.encode())
        return ["tasks.json", "labeling_config.xml"]


class LabelStudioBrushExporter(LabelStudioExporter):
    """``label-studio-brush``: each mask one ``brushlabels`` result in Label Studio's RLE."""

    tag = "BrushLabels"

    def _results(self, image: ExportImage, annotation: dict) -> list[dict]:
        return [{
            **self._result_base(image, annotation, str(annotation["id"])),
            "value": {
                "format": "rle",
                "rle": encode_brush_rle(decode_mask(annotation["segmentation"])),
                "brushlabels": [self.names[annotation["category_id"]]],
            },
        }]
