"""What every segmentation method returns, and the interface the runtime drives."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    import torch

    from labeler.timing import StageTimer

#: Annotation ids are ``image_id * MAX_LABELS_PER_IMAGE + label``: stable without a global counter.
MAX_LABELS_PER_IMAGE = 4096


@dataclass(frozen=True)
class ImageLabels:
    """The labels of one image at its original resolution.

    Attributes:
        label_map: (H, W) int32; value ``k >= 0`` is label k, ``-1`` means no annotation
            (SLiMe background).
        category_ids: (L,) int64, the COCO category id of each label value.
        scores: (L,) float64 in [0, 1], a confidence per label (the annotation ``score``).
    """

    label_map: np.ndarray
    category_ids: np.ndarray
    scores: np.ndarray

    def __post_init__(self) -> None:
        if self.label_map.ndim != 2:
            raise ValueError(f"label_map must be (H, W), got {self.label_map.shape}")
        if len(self.category_ids) != len(self.scores):
            raise ValueError("category_ids and scores must have one entry per label")
        if len(self.category_ids) > MAX_LABELS_PER_IMAGE:
            raise ValueError(f"at most {MAX_LABELS_PER_IMAGE} labels per image")


class Segmenter(Protocol):
    """A method loaded once per worker and applied to many batches of images.

    Attributes:
        categories: COCO categories (``id``, ``name``, ``supercategory``) this method emits.
        timer: seconds per stage of the method (recorded in each shard's stats).
        device: where the method runs (recorded in the worker's stats).
    """

    categories: list[dict]
    timer: StageTimer
    device: torch.device | str

    def label(self, images: list[np.ndarray]) -> list[ImageLabels]:
        """Label a batch of (H_i, W_i, 3) uint8 RGB images (sizes may differ)."""
        ...

    def provenance(self) -> dict:
        """Method name, model, and settings recorded with every annotation."""
        ...


def compact_labels(
    label_map: np.ndarray, confidence: np.ndarray, category_of: np.ndarray | None = None
) -> ImageLabels:
    """Renumber the labels present in ``label_map`` to 0..L-1 and score each by mean confidence.

    Args:
        label_map: (H, W) integer map, ``-1`` for no annotation.
        confidence: (H, W) float, the per-pixel confidence of the winning label.
        category_of: category id per original label value; defaults to category 1 for all.
    """
    valid = label_map >= 0
    present, inverse = np.unique(label_map[valid], return_inverse=True)
    compact = np.full(label_map.shape, -1, dtype=np.int32)
    compact[valid] = inverse
    sums = np.bincount(
        inverse, weights=confidence[valid].astype(np.float64), minlength=len(present)
    )
    counts = np.bincount(inverse, minlength=len(present))
    scores = np.clip(sums / np.maximum(counts, 1), 0.0, 1.0)
    categories = np.ones(len(present), np.int64) if category_of is None else category_of[present]
    return ImageLabels(compact, categories.astype(np.int64), scores)
