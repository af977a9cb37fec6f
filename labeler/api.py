"""The Python API: label images in process, or run a whole job.

``Labeler`` loads the model and the method once and labels images given as Pillow images, numpy
arrays, paths or fsspec URIs; nothing is written and no Ray is started::

    import labeler

    segmenter = labeler.Labeler(method="diffseg", model="tiny", kl_threshold=0.9)
    result = segmenter.label("photo.jpg")        # or a PIL image, an (H, W, 3) uint8 array
    result.masks.shape                           # (N, H, W) bool at the image's stored size
    annotations = result.to_coco(image_id=1)     # COCO dicts with compressed RLE
    for result in segmenter.label_many(paths):   # batches of ``batch_size`` images
        if result.failed:                        # a bad file is a result, not an exception
            print(result.reason, result.detail)

Paths and URIs are decoded as ``labeler run`` decodes them (the same decoder call): with
``draft_decode`` (the default) only as large as the method's input needs, labels reported at the
stored size, the reduction in ``result.decode_scale``. Pillow images and arrays are labeled as
given (already decoded: ``decode_scale`` 1).

``labeler.run(job)`` runs a job (a job file path or a dict of its keys) exactly like
``labeler run`` and returns its :class:`~labeler.runtime.job.RunSummary`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np
from PIL import Image

from labeler.config import JobConfig, build_config, load_job_file
from labeler.errors import UserError
from labeler.io.decode import (
    DEFAULT_MAX_DECODED_PIXELS,
    DEFAULT_MAX_PIXELS,
    ImageDecodeError,
    decode_image,
    pil_to_rgb,
)
from labeler.io.reading import read_image_bytes
from labeler.methods.base import ImageLabels
from labeler.methods.registry import DEFAULT_METHOD
from labeler.output.coco_records import label_map_annotations
from labeler.output.failures import read_failure_reason
from labeler.output.reader import with_used_categories

#: What :meth:`Labeler.label` accepts.
ImageInput = Union[Image.Image, np.ndarray, str, Path]  # noqa: UP007 - readable in the docs

#: ``JobConfig`` needs an input and an output; in-process labeling reads and writes neither.
_IN_PROCESS = "<in-process>"
#: ``reason`` of a numpy array that is not an image (wrong dtype or shape).
INVALID_ARRAY = "invalid_array"


@dataclass(frozen=True)
class LabelResult:
    """The labels of one image.

    Attributes:
        masks: (N, H, W) bool, one mask per label at the image's original size (no empty masks).
        category_ids: (N,) int64, the COCO category id of each mask.
        scores: (N,) float64 in [0, 1], the confidence of each mask.
        categories: the method's COCO categories (``id``, ``name``, ``supercategory``).
        reason: why the image could not be labeled (the reasons of ``images.parquet``:
            ``truncated``, ``not_an_image``, ``read_error``, ...), None when it was labeled.
            A failed result has no masks.
        detail: a human-readable explanation of ``reason``.
        name_scores: (N,) float64 in [0, 1], how well each mask's name explains it (DiffSeg with
            ``names``), or None.
        decode_scale: the factor the decoder reduced the image by before the method saw it
            (``images.parquet``'s ``decode_scale``: 1 is full size, a side is
            ``ceil(stored side / decode_scale)``; 1 for Pillow images and arrays), None for a
            failed result.
    """

    masks: np.ndarray
    category_ids: np.ndarray
    scores: np.ndarray
    categories: list[dict]
    reason: str | None = None
    detail: str | None = None
    name_scores: np.ndarray | None = None
    decode_scale: int | None = None

    @property
    def failed(self) -> bool:
        """The image could not be read or decoded (see ``reason``)."""
        return self.reason is not None

    @property
    def category_names(self) -> list[str]:
        """The category name of each mask."""
        names = {c["id"]: c["name"] for c in self.categories}
        return [names[int(c)] for c in self.category_ids]

    def to_coco(self, image_id: int = 1) -> list[dict]:
        """COCO annotation dicts (compressed RLE with string counts, area, bbox, score, and
        ``name_score`` when there are names).

        Ids follow the run's rule, ``image_id * 4096 + mask index``.
        """
        label_map = np.full(self.masks.shape[1:], -1, dtype=np.int32)
        for index, mask in enumerate(self.masks):
            label_map[mask] = index
        records = label_map_annotations(label_map, self.category_ids.tolist(),
                                        self.scores.tolist(), image_id)
        if self.name_scores is not None:
            for record, name_score in zip(records, self.name_scores, strict=True):
                record["name_score"] = float(name_score)
        return records


def _failure(reason: str, detail: str, categories: list[dict]) -> LabelResult:
    return LabelResult(masks=np.zeros((0, 0, 0), dtype=bool), category_ids=np.zeros(0, np.int64),
                       scores=np.zeros(0), categories=categories, reason=reason, detail=detail)


@dataclass(frozen=True)
class _Decoded:
    """An image as the method sees it: (h, w, 3) uint8 ``pixels``, the stored image's
    (height, width) and the factor the decoder reduced it by."""

    pixels: np.ndarray
    stored: tuple[int, int]
    scale: int


def _result(labels: ImageLabels, image: _Decoded, categories: list[dict],
            supercategory: str | None = None) -> LabelResult:
    """The result of one labeled image, its labels scaled back (nearest) to the stored size; a
    method with open categories (``supercategory``: DiffSeg's caption nouns) adds the image's own
    categories to the method's."""
    if labels.shape != image.pixels.shape[:2]:
        raise ValueError(f"label map {labels.shape} for an image of {image.pixels.shape[:2]}")
    labels = labels.resized(*image.stored)
    if labels.category_names is not None and supercategory is not None:
        used = {int(i): {n} for i, n in zip(labels.category_ids, labels.category_names)}
        categories = with_used_categories(categories, used, supercategory)
    values = np.arange(len(labels.category_ids))
    masks = labels.label_map[None] == values[:, None, None]
    kept = masks.any(axis=(1, 2))
    return LabelResult(
        masks=masks[kept],
        category_ids=np.asarray(labels.category_ids, dtype=np.int64)[kept],
        scores=np.asarray(labels.scores, dtype=np.float64)[kept],
        categories=categories,
        name_scores=None if labels.name_scores is None
        else np.asarray(labels.name_scores, dtype=np.float64)[kept],
        decode_scale=image.scale,
    )


class Labeler:
    """A segmentation method on a loaded model, labeling images in this process.

    Args:
        method: a method name (``labeler run --help`` lists them); default: the job default.
        model: ``tiny``, a Hugging Face id or a diffusers directory (default: the method's).
        device, dtype, batch_size, seed, max_pixels, draft_decode: the job settings of the
            same names (see ``labeler run --help``; left out: the job defaults).
            ``batch_size`` is the images per model call in :meth:`label_many`, ``max_pixels``
            the decompression-bomb limit for paths and URIs, ``draft_decode`` (default True)
            decodes paths and URIs only as large as the method's input needs, as a run does
            (False: at full size; the method's parity modes always decode at full size).
        storage_options: fsspec options (credentials, endpoint) for URIs.
        **settings: the method's settings, as in its job table (``[diffseg]``, ``[slime]``,
            ...), checked by the method's settings model: e.g. ``kl_threshold=0.9`` or
            ``names=["person", "car"]`` for DiffSeg, ``embeddings="set.safetensors"`` for SLiMe.

    Raises:
        UserError: unknown method or setting, a bad value (the model is not loaded then).
    """

    def __init__(self, method: str = DEFAULT_METHOD, model: str | None = None, *,
                 device: str | None = None, dtype: str | None = None,
                 batch_size: int | None = None, seed: int | None = None,
                 max_pixels: int | None = None, draft_decode: bool | None = None,
                 storage_options: dict | None = None, **settings: Any) -> None:
        job = {"method": method, "model": model, "device": device, "dtype": dtype,
               "batch_size": batch_size, "seed": seed, "max_pixels": max_pixels,
               "draft_decode": draft_decode}
        values = {"input": _IN_PROCESS, "output": _IN_PROCESS, method: settings,
                  **{key: value for key, value in job.items() if value is not None}}
        self.config: JobConfig = build_config(values, {})
        self.max_pixels = self.config.max_pixels or DEFAULT_MAX_PIXELS
        self.storage_options = storage_options
        self.segmenter = self.config.build_segmenter()
        #: the side paths and URIs are decoded down to (None: full size), as in a run
        self.decode_side = self.config.decode_side_for(self.segmenter)

    @property
    def categories(self) -> list[dict]:
        """The COCO categories this method emits."""
        return list(self.segmenter.categories)

    def pixels(self, image: ImageInput) -> np.ndarray:
        """The (h, w, 3) uint8 RGB array the method sees for ``image`` (a path or URI: decoded
        as a run decodes it, reduced with ``draft_decode``).

        Raises:
            ValueError: an array that is not uint8 (H, W), (H, W, 3) or (H, W, 4), or a file
                that is not a readable image (``ImageDecodeError``, with its ``reason``).
        """
        return self._decode(image).pixels

    def _decode(self, image: ImageInput) -> _Decoded:
        """``image`` as the method sees it (see :meth:`pixels`), with its stored size."""
        if isinstance(image, str | Path):
            data = read_image_bytes(str(image), storage_options=self.storage_options)
            decoded = decode_image(data, max_pixels=self.max_pixels,
                                   max_decoded_pixels=DEFAULT_MAX_DECODED_PIXELS,
                                   needed_side=self.decode_side)
            return _Decoded(decoded.pixels, (decoded.original_height, decoded.original_width),
                            decoded.scale)
        pixels = self._in_memory(image)
        return _Decoded(pixels, pixels.shape[:2], 1)

    @staticmethod
    def _in_memory(image: ImageInput) -> np.ndarray:
        """The RGB pixels of a Pillow image or an array (already decoded: at full size)."""
        if isinstance(image, Image.Image):
            return pil_to_rgb(image)
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim not in (2, 3) or (
                image.ndim == 3 and image.shape[2] not in (3, 4)
            ):
                raise UserError(f"an image array must be uint8 (H, W), (H, W, 3) or (H, W, 4); "
                                 f"got {image.dtype} {image.shape}")
            return pil_to_rgb(Image.fromarray(image))
        raise TypeError(f"cannot label a {type(image).__name__}: give a PIL image, a numpy "
                        "array, a path or a URI")

    def label(self, image: ImageInput) -> LabelResult:
        """Label one image (see :meth:`pixels` for what is accepted).

        Raises:
            ValueError: the image cannot be read or decoded (see :meth:`pixels`).
        """
        return next(self.label_many([image], errors="raise"))

    def label_many(self, images: Iterable[ImageInput],
                   errors: Literal["record", "raise"] = "record") -> Iterator[LabelResult]:
        """Label a stream of images, ``batch_size`` per model call; results in input order.

        Args:
            errors: ``record`` (default): an image that cannot be read or decoded gives a failed
                result (``result.failed``, with ``reason`` and ``detail``, as ``labeler run``
                records it) and the stream goes on; ``raise``: its error is raised.
        """
        if errors not in ("record", "raise"):
            raise UserError(f"errors must be 'record' or 'raise' (got {errors!r})")
        iterator = iter(images)
        categories = self.categories
        supercategory = self.config.spec.open_categories(self.config.settings)
        while chunk := list(islice(iterator, self.config.batch_size)):
            prepared = [self._prepare(image, errors) for image in chunk]
            pixels = [item.pixels for item in prepared if isinstance(item, _Decoded)]
            labelled = iter(self.segmenter.label(pixels) if pixels else [])
            for item in prepared:
                if isinstance(item, _Decoded):
                    yield _result(next(labelled), item, categories, supercategory)
                else:
                    yield _failure(*item, categories)

    def _prepare(self, image: ImageInput, errors: str) -> _Decoded | tuple[str, str]:
        """``image`` decoded, or ``(reason, detail)`` when it cannot be read or decoded."""
        try:
            return self._decode(image)
        except ImageDecodeError as error:
            if errors == "raise":
                raise
            return error.reason, error.detail
        except (OSError, ValueError) as error:
            if errors == "raise":
                raise
            reason = INVALID_ARRAY if isinstance(image, np.ndarray) else read_failure_reason(
                error, str(image))
            return reason, f"{type(error).__name__}: {error}"


def run(job: str | Path | dict, progress: bool = False, **overrides: Any):
    """Run (or resume) a labeling job like ``labeler run``; returns its ``RunSummary``.

    Args:
        job: a TOML job file, or a dict of the same keys.
        progress: show the progress bar.
        **overrides: job keys that win over the file (like flags).
    """
    # Ray is imported here, not with the package: ``import labeler`` and ``Labeler`` stay Ray-free.
    from labeler.runtime.job import run_job

    values = dict(job) if isinstance(job, dict) else load_job_file(job)
    return run_job(build_config(values, overrides), progress=progress)
