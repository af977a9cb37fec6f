"""``coco-rle`` and ``coco-polygons``: COCO instances files with relative ``file_name``.

``coco-rle`` keeps the output's compressed RLE; ``coco-polygons`` writes each mask as polygons
(:mod:`.polygons`: holes cut in, every fragment kept). Images and annotations are rendered one
image at a time into temporary fragments, which :class:`~labeler.output.coco_files.CocoFilesWriter`
concatenates into ``annotations.json``, or into ``coco/part-NNNNN.json`` with ``coco/index.json``
above ``coco_max_annotations``. The run's own ``coco.json`` is this exporter fed the fragments
its workers rendered (:meth:`CocoExporter.add_fragment`).
"""

from __future__ import annotations

import sys

from labeler.output.coco_files import DEFAULT_MAX_ANNOTATIONS, CocoFilesWriter, Fragment
from labeler.output.coco_records import coco_image, render
from labeler.output.exporters.base import ExportContext, Exporter
from labeler.output.exporters.polygons import mask_polygons
from labeler.output.exporters.source import ExportImage
from labeler.output.rle import decode_mask


class CocoExporter(Exporter):
    """COCO instances at ``annotations.json`` (``layout`` sets the file and images folder)."""

    annotations_file = "annotations.json"
    #: what the ``info`` block's ``segmentation`` says (``None``: no such key)
    segmentation = "rle"
    polygons = False
    #: whether ``coco_max_annotations`` splits the export (layouts that name one file do not)
    splits = True

    def __init__(self, context: ExportContext) -> None:
        super().__init__(context)
        info = dict(context.info)
        if self.segmentation is not None:
            info["segmentation"] = self.segmentation
        self._writer = CocoFilesWriter(
            context.out, self.annotations_file, info, context.categories,
            (context.coco_max_annotations or DEFAULT_MAX_ANNOTATIONS) if self.splits
            else sys.maxsize,
        )
        self._fragments = 0
        self._images = self._annotations = None
        self._n_images = self._n_annotations = 0

    def add(self, image: ExportImage, annotations: list[dict]) -> None:
        if self._images is not None and (self._n_annotations + len(annotations)
                                         > self._writer.max_annotations):
            self._hand_over()
        if self._images is None:
            self._start_fragment()
        record = coco_image(image.image_id, image.file_name, image.uri, image.width, image.height)
        self._write(self._images, self._n_images, record)
        self._n_images += 1
        for annotation in annotations:
            if self.polygons:
                polygons = mask_polygons(decode_mask(annotation["segmentation"]),
                                         self.context.tolerance)
                annotation = {
                    **annotation,
                    "segmentation": [[round(float(v), 2) for v in p.ravel()] for p in polygons],
                }
            self._write(self._annotations, self._n_annotations, annotation)
            self._n_annotations += 1

    def add_fragment(self, fragment: Fragment) -> None:
        """Append records rendered elsewhere (a shard's, at commit) after those added so far."""
        if self._images is not None:
            self._hand_over()
        self._writer.add(fragment)

    def finish(self) -> list[str]:
        if self._images is not None:
            self._hand_over()
        return self._writer.close()

    def abandon(self) -> None:
        self._writer.abort()

    @staticmethod
    def _write(handle, written: int, record: dict) -> None:
        handle.write((b",\n" if written else b"") + render([record]))

    def _start_fragment(self) -> None:
        stem = f"{self.annotations_file}.{self._fragments}"
        self._paths = (f"{stem}.images.part", f"{stem}.annotations.part")
        self._images, self._annotations = (self.open_file(path) for path in self._paths)
        self._n_images = self._n_annotations = 0
        self._fragments += 1

    def _hand_over(self) -> None:
        """Publish the fragment being written and give it to the files writer."""
        self.close_file(self._images)
        self.close_file(self._annotations)
        self._writer.add(Fragment(self.context.out, *self._paths, self._n_images,
                                  self._n_annotations, temporary=True))
        self._images = self._annotations = None


class CocoPolygonExporter(CocoExporter):
    segmentation = "polygons"
    polygons = True


class CvatExporter(CocoPolygonExporter):
    """CVAT's COCO 1.0 layout: ``annotations/instances_default.json`` + ``images/``.

    Zip the folder (or point Datumaro at it) and import it as "COCO 1.0"; ``file_name``s are
    relative, so CVAT finds the images under ``images/``.
    """

    annotations_file = "annotations/instances_default.json"
    splits = False


class FiftyOneExporter(CocoExporter):
    """FiftyOne's ``COCODetectionDataset`` layout: ``labels.json`` (RLE, ``score``) + ``data/``.

    ``fo.Dataset.from_dir(dataset_dir=DIR, dataset_type=fo.types.COCODetectionDataset,
    label_types="segmentations")`` loads it with instance masks and each annotation's ``score``
    as ``confidence``; without ``--images copy|link`` pass ``data_path=`` the image root.
    """

    annotations_file = "labels.json"
    splits = False
    images_subdir = "data"


class RunCocoExporter(CocoExporter):
    """A run's own COCO output: ``coco.json`` (or split), its ``info`` block as the run made it."""

    annotations_file = "coco.json"
    segmentation = None
