"""What every export format implements, and the streaming JSON array writer they share.

An exporter is a context manager: ``with Format(context) as exporter: exporter.add(...)``. On a
clean exit it finishes its files (:meth:`Exporter.close`) and publishes the ones it opened with
:meth:`Exporter.open_file`; when the block raises, those are discarded (atomic writers) and the
format removes what it already published (:meth:`Exporter.abandon`), so an export that failed half
way leaves no half file behind.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Self

from labeler.io.folders import AtomicWriter, Folder
from labeler.output.exporters.source import ExportImage


@dataclass(frozen=True)
class ExportOptions:
    """Options that only some formats read (``labeler export`` refuses them for the others).

    Attributes:
        image_url_prefix: ``label-studio*``: a task's image is this prefix + the relative
            ``file_name`` (``None``: ``/data/local-files/?d=`` + ``file_name``).
        as_annotations: ``label-studio*``: write the masks as annotations instead of
            predictions (pre-annotations).
        fragment_min_area: ``label-studio``: fragments of a segment smaller than this many
            pixels are dropped from its polygon (the largest fragment is always kept).
        renames: every format: old class name -> new name (two onto one merge them,
            :mod:`.review`).
        val_fraction: COCO formats, ``yolo-seg``, ``hf``: the share of images in the ``val``
            split (:func:`.review.split_of`); 0: one split, ``train``.
        seed: the split's seed.
        label_field: ``fiftyone``: the sample field the labels are imported into.
        coco_max_annotations: ``coco-rle``/``coco-polygons``: above this many annotations the
            export is split into ``coco/part-NNNNN.json`` files (:mod:`labeler.output.coco_files`;
            ``None``: the default bound).
    """

    image_url_prefix: str | None = None
    as_annotations: bool = False
    fragment_min_area: float = 16.0
    renames: dict[str, str] = field(default_factory=dict)
    val_fraction: float = 0.0
    seed: int = 0
    label_field: str = "predictions"
    coco_max_annotations: int | None = None


@dataclass(frozen=True)
class ExportContext:
    """What a format gets besides the images.

    Attributes:
        out: the export folder.
        categories: the output's COCO categories.
        info: the output's COCO ``info`` block (method, model, run id, image root).
        images_dir: where images are placed with ``--images copy|link``, relative to ``out``
            (``None``: images stay at their source; ``file_name``s are relative to the root).
        tolerance: polygon simplification in pixels (:mod:`.polygons`).
        images: the ``--images`` mode (``none``, ``copy``, ``link``).
        storage_options: fsspec options for reading the source images.
        options: the format-specific options.
    """

    out: Folder
    categories: list[dict]
    info: dict
    images_dir: str | None
    tolerance: float
    images: str = "none"
    storage_options: dict | None = None
    options: ExportOptions = ExportOptions()


class Exporter(ABC):
    """One export format: fed images one at a time, so memory is flat in the collection size.

    Attributes:
        files: after a clean exit, the main files written (relative to the export).
    """

    #: the folder, relative to the export, where ``--images copy|link`` puts the images
    #: (``None``: the format places or embeds them itself)
    images_subdir: str | None = "images"
    #: whether the format writes a file named after each image (its names are then shortened
    #: when too long, :mod:`.long_names`, as they are for every format placing images)
    names_files: bool = False

    def __init__(self, context: ExportContext) -> None:
        self.context = context
        self.files: list[str] = []
        self._open: dict[int, AtomicWriter] = {}

    def __enter__(self) -> Self:
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        if error_type is not None:
            self._discard_all(error_type, error, traceback)
            return
        try:
            self.files = self.close()
        except BaseException as failure:
            self._discard_all(type(failure), failure, failure.__traceback__)
            raise
        for key in list(self._open):
            self._open.pop(key).__exit__(None, None, None)

    def open_file(self, relative: str):
        """A binary handle on ``out/relative``, published when closed cleanly (by
        :meth:`close_file` or at the end of the ``with`` block) and discarded on error."""
        writer = self.context.out.open_atomic_writer(relative)
        handle = writer.__enter__()
        self._open[id(handle)] = writer
        return handle

    def close_file(self, handle) -> None:
        """Publish a file opened with :meth:`open_file` now."""
        self._open.pop(id(handle)).__exit__(None, None, None)

    def _discard_all(self, error_type, error, traceback) -> None:
        for key in list(self._open):
            self._open.pop(key).__exit__(error_type, error, traceback)
        self.abandon()

    def abandon(self) -> None:
        """Remove what the format already published when the export fails (default: nothing)."""

    def image_path(self, image: ExportImage) -> str:
        """Where ``--images copy|link`` puts ``image``, relative to the export."""
        return f"{self.context.images_dir}/{image.file_name}"

    @abstractmethod
    def add(self, image: ExportImage, annotations: list[dict]) -> None:
        """Write one image's (already filtered) annotations."""

    @abstractmethod
    def close(self) -> list[str]:
        """Finish the files; return the main files written (relative to the export). Called by
        the ``with`` block's clean exit."""


class JsonArrayWriter:
    """Writes ``prefix [item, item, ...] suffix`` to a binary handle, item by item."""

    def __init__(self, handle) -> None:
        self._handle = handle
        self._first = True

    def raw(self, text: str) -> None:
        self._handle.write(text.encode("utf-8"))

    def item(self, value) -> None:
        self.raw(("\n" if self._first else ",\n") + json.dumps(value, ensure_ascii=False))
        self._first = False
