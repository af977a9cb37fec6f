"""What every export format implements, and the streaming JSON array writer they share."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from labeler.io.folders import Folder
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
    """

    image_url_prefix: str | None = None
    as_annotations: bool = False
    fragment_min_area: float = 16.0
    renames: dict[str, str] = field(default_factory=dict)
    val_fraction: float = 0.0
    seed: int = 0
    label_field: str = "predictions"


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
    """One export format: fed images one at a time, so memory is flat in the collection size."""

    #: the folder, relative to the export, where ``--images copy|link`` puts the images
    #: (``None``: the format places or embeds them itself)
    images_subdir: str | None = "images"

    def __init__(self, context: ExportContext) -> None:
        self.context = context

    def image_path(self, image: ExportImage) -> str:
        """Where ``--images copy|link`` puts ``image``, relative to the export."""
        return f"{self.context.images_dir}/{image.file_name}"

    @abstractmethod
    def add(self, image: ExportImage, annotations: list[dict]) -> None:
        """Write one image's (already filtered) annotations."""

    @abstractmethod
    def close(self) -> list[str]:
        """Finish the files; return the main files written (relative to the export)."""


class JsonArrayWriter:
    """Writes ``prefix [item, item, ...] suffix`` to an atomic file, item by item."""

    def __init__(self, out: Folder, relative: str) -> None:
        self._context = out.open_atomic_writer(relative)
        self._handle = self._context.__enter__()
        self._first = True

    def raw(self, text: str) -> None:
        self._handle.write(text.encode("utf-8"))

    def item(self, value) -> None:
        self.raw(("\n" if self._first else ",\n") + json.dumps(value, ensure_ascii=False))
        self._first = False

    def restart(self) -> None:
        """The next :meth:`item` starts a new array (no comma before it)."""
        self._first = True

    def close(self) -> None:
        self._context.__exit__(None, None, None)
