"""Relabelling and scoring on the model's device; only the int32 map at the label grid crosses over.

A method's labeling splits in two steps (see :class:`labeler.methods.base.Segmenter`): the device
step, on the model's thread, ends with :func:`device_step`; the host step,
:func:`finish_labels`, may run on a post-processing thread while the model labels the next batch.
On an accelerator the relabelling runs in the device step (only the int32 map crosses over); on
the CPU it is host work, so it is left to the host step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from labeler.methods.base import ImageLabels, compact_resized_labels
from labeler.methods.label_maps import resize_weights


@dataclass(frozen=True)
class PendingLabels:
    """Label-grid outputs on the host, waiting for relabelling and the resize to the image.

    Attributes:
        grid_labels: (h, w) integer label values, negative for no annotation.
        grid_confidence: (h, w) float, the winning label's confidence.
        height, width: the original image size.
        category_of: category id per label value, or None for category 1.
    """

    grid_labels: np.ndarray
    grid_confidence: np.ndarray
    height: int
    width: int
    category_of: np.ndarray | None = None

    def finish(self) -> ImageLabels:
        """The image's labels (what :func:`compact_device_labels` returns for these maps)."""
        return compact_resized_labels(self.grid_labels, self.grid_confidence, self.height,
                                      self.width, self.category_of)


#: What a method's device step gives per image: final labels, or host work still to do.
RawLabels = ImageLabels | PendingLabels


def device_step(
    grid_labels: Tensor,
    grid_confidence: Tensor,
    height: int,
    width: int,
    category_of: np.ndarray | None = None,
) -> RawLabels:
    """The end of a method's device step for one image (arguments of :func:`compact_device_labels`).

    On an accelerator the relabelling runs there and the labels are final; for CPU
    tensors the maps are handed over as :class:`PendingLabels` (numpy views, no copy; numpy's tables are
    faster than torch's on the host).
    """
    if grid_labels.device.type == "cpu":
        return PendingLabels(grid_labels.numpy(), grid_confidence.numpy(), height, width,
                             category_of)
    return _compact_on_device(grid_labels, grid_confidence, height, width, category_of)


def finish_labels(raw: RawLabels) -> ImageLabels:
    """The host step: the labels of one image from its :func:`device_step` output."""
    return raw.finish() if isinstance(raw, PendingLabels) else raw


def compact_device_labels(
    grid_labels: Tensor,
    grid_confidence: Tensor,
    height: int,
    width: int,
    category_of: np.ndarray | None = None,
) -> ImageLabels:
    """What :func:`labeler.methods.base.compact_resized_labels` computes, on the tensors' device.

    Per-label pixel counts and confidence sums (fp64, each grid cell weighted by the pixels it
    becomes, so a score is the mean over full-resolution pixels) and the lookup to 0..L-1 run
    where the tensors are; the host receives the (h, w) int32 map at the grid (the nearest resize
    to (height, width) as index maps, :meth:`ImageLabels.resized`) and two vectors of one entry
    per label value.

    Args:
        grid_labels: (h, w) integer label values (an argmax: bounded by the number of
            candidates), negative for no annotation.
        grid_confidence: (h, w) float, the winning label's confidence.
        height, width: the original image size.
        category_of: category id per label value; defaults to category 1 for all.
    """
    return finish_labels(device_step(grid_labels, grid_confidence, height, width, category_of))


def _compact_on_device(
    grid_labels: Tensor,
    grid_confidence: Tensor,
    height: int,
    width: int,
    category_of: np.ndarray | None,
) -> ImageLabels:
    """:func:`compact_device_labels` in torch, wherever the tensors are."""
    device = grid_labels.device
    grid = tuple(grid_labels.shape)
    bins = grid_labels.flatten().clamp(min=-1).long() + 1  # bin 0: no annotation
    table_size = int(bins.max()) + 1 if bins.numel() else 1
    weights = None
    score_weights = grid_confidence.flatten().double()
    if grid != (height, width):
        weights = torch.from_numpy(resize_weights(grid, height, width)).flatten().to(
            device, torch.float64
        )
        score_weights = score_weights * weights
    pixels = torch.bincount(bins, weights=weights, minlength=table_size).cpu().numpy()
    sums = torch.bincount(bins, weights=score_weights, minlength=table_size).cpu().numpy()
    pixels[0] = 0
    present = np.flatnonzero(pixels)
    lookup = np.full(table_size, -1, np.int32)
    lookup[present] = np.arange(len(present), dtype=np.int32)
    compact = torch.from_numpy(lookup).to(device)[bins].reshape(grid)
    scores = np.clip(sums[present] / np.maximum(pixels[present], 1), 0.0, 1.0)
    values = present - 1
    categories = np.ones(len(values), np.int64) if category_of is None else category_of[values]
    labels = ImageLabels(compact.cpu().numpy(), categories.astype(np.int64), scores)
    return labels.resized(height, width)
