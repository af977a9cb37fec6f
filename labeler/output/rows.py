"""Typed rows of the per-shard parts: one image row per input image, one annotation row per mask.

The runtime hands the builders what it knows about an image (its manifest entry, its labels or its
failure); the builders decide the columns, so the row layout of ``images.parquet`` and
``annotations/`` is written down here and in :mod:`labeler.output.schema` only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

from labeler.io.uris import redact_text
from labeler.methods.base import MAX_LABELS_PER_IMAGE, ImageLabels
from labeler.output import schema
from labeler.output.failures import is_retryable
from labeler.output.rle import encode_label_map

#: Longest ``detail`` kept in a failed image's row.
MAX_DETAIL_CHARS = 500


class ImageRow(TypedDict):
    """One row of ``images.parquet`` (columns of :data:`labeler.output.schema.IMAGES`)."""

    uri: str
    image_id: int
    status: str
    reason: str | None
    detail: str | None
    width: int | None
    height: int | None
    n_annotations: int
    shard_id: str
    file_name: str
    retryable: bool | None
    decode_scale: int | None
    input_identity: str | None


class AnnotationRow(TypedDict):
    """One row of ``annotations/`` (columns of :data:`labeler.output.schema.ANNOTATIONS`)."""

    id: int
    image_id: int
    category_id: int
    category_name: str
    segmentation_counts: str
    segmentation_size: list[int]
    area: int
    bbox: list[float]
    iscrowd: int
    score: float
    file_name: str
    method: str
    model: str
    resource_digest: str | None
    run_id: str
    name_score: float | None


@dataclass(frozen=True)
class Provenance:
    """What every annotation of a run records about how it was made."""

    method: str
    model: str
    resource_digest: str | None
    run_id: str


def annotation_id(image_id: int, label: int) -> int:
    """The stable annotation id of label ``label`` of image ``image_id`` (no global counter)."""
    return image_id * MAX_LABELS_PER_IMAGE + label


def failed_image_row(uri: str, image_id: int, reason: str, detail: str, shard_id: str,
                     file_name: str | None = None,
                     input_identity: str | None = None) -> ImageRow:
    """The row of an image that produced no labels, with its machine-readable ``reason``.

    ``file_name`` is the name relative to the image root (:mod:`labeler.output.names`);
    the URI when not given. ``input_identity``: the identity of the bytes read
    (:mod:`labeler.io.identity`), None when nothing was read. Credentials in ``detail`` (an
    error that quotes the URL it read) are redacted.
    """
    return ImageRow(uri=uri, image_id=image_id, status=schema.IMAGE_STATUS_FAILED, reason=reason,
                    detail=redact_text(detail)[:MAX_DETAIL_CHARS], width=None, height=None, n_annotations=0,
                    shard_id=shard_id, file_name=file_name or uri,
                    retryable=is_retryable(reason), decode_scale=None,
                    input_identity=input_identity)


def labeled_rows(uri: str, image_id: int, width: int, height: int, labels: ImageLabels,
                 category_names: dict[int, str], provenance: Provenance, shard_id: str,
                 file_name: str | None = None, decode_scale: int | None = None,
                 input_identity: str | None = None) -> tuple[ImageRow, list[AnnotationRow]]:
    """The image row and annotation rows of one labeled image.

    Args:
        uri, image_id: the image's manifest entry.
        width, height: the decoded image's size (the label map is (height, width)); a map held
            at a label grid is encoded from the grid (no full-size map is built).
        labels: the method's labels; label k becomes annotation ``annotation_id(image_id, k)``.
            Labels covering no pixel get no annotation.
        category_names: COCO category id -> name (the labels' own ``category_names`` win: a
            method with open categories names them per image).
        provenance: recorded with every annotation.
        shard_id: the shard the image belongs to.
        file_name: the name relative to the image root (:mod:`labeler.output.names`); the URI
            when not given.
        decode_scale: the factor the decoder reduced the stored image by before the method saw
            it (:attr:`labeler.io.decode.DecodedImage.scale`); None when not known.
        input_identity: the identity of the bytes labeled (:mod:`labeler.io.identity`).
    """
    file_name = file_name or uri
    masks = encode_label_map(labels.grid, len(labels.category_ids), labels.rows, labels.cols)
    annotations: list[AnnotationRow] = []
    name_scores = [None] * len(masks) if labels.name_scores is None else labels.name_scores
    names = labels.category_names or [category_names[int(c)] for c in labels.category_ids]
    for label, (mask, category, name, score, name_score) in enumerate(
        zip(masks, labels.category_ids, names, labels.scores, name_scores)
    ):
        if mask.area == 0:
            continue
        annotations.append(AnnotationRow(
            id=annotation_id(image_id, label), image_id=image_id, category_id=int(category),
            category_name=name, segmentation_counts=mask.counts,
            segmentation_size=[mask.height, mask.width], area=mask.area, bbox=mask.bbox,
            iscrowd=0, score=float(score), file_name=file_name, method=provenance.method,
            model=provenance.model, resource_digest=provenance.resource_digest,
            run_id=provenance.run_id,
            name_score=None if name_score is None else float(name_score),
        ))
    image = ImageRow(uri=uri, image_id=image_id, status=schema.IMAGE_STATUS_LABELED, reason=None,
                     detail=None, width=width, height=height, n_annotations=len(annotations),
                     shard_id=shard_id, file_name=file_name, retryable=None,
                     decode_scale=decode_scale, input_identity=input_identity)
    return image, annotations
