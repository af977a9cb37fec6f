"""Held-out one-shot scores of a DiffewS checkpoint, through the segmenter that `labeler run` uses.

An episode is one support image whose label map marks one class (1) on background (0), and one
query image with the true mask of that class (empty when the query lacks it). The query is
labelled by :class:`~labeler.methods.diffews.segmenter.DiffewS` with that single-class support,
so the score covers the whole run path: banks, query pass, decoding, resizing and the decision
rule. :func:`few_shot_episodes` draws episodes from the procedural world of
:func:`labeler.testing.worlds.few_shot_world`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from labeler.methods.annotations import AnnotatedImage
from labeler.methods.diffews.algorithm import resize_soft_maps
from labeler.methods.diffews.segmenter import DiffewS
from labeler.methods.diffews.settings import DiffewsOptions
from labeler.testing.worlds import FEW_SHOT_CLASSES, few_shot_world


@dataclass(frozen=True)
class Episode:
    """One support, one query.

    Attributes:
        support: (H, W, 3) uint8 image with a (H, W) label map, 1 = the class, 0 = the rest.
        query: (H', W', 3) uint8.
        truth: (H', W') bool, the class in the query.
    """

    support: AnnotatedImage
    query: np.ndarray
    truth: np.ndarray


def few_shot_episodes(seed: int, count: int, size: int, absent: bool = False) -> list[Episode]:
    """``count`` episodes of :func:`few_shot_world` images: each query holds its class (or, with
    ``absent``, only other classes).

    The class of an episode cycles over the world's object classes; support and query are
    separate draws of the world.
    """
    rng = np.random.default_rng(seed)
    others = len(FEW_SHOT_CLASSES) - 1
    episodes = []
    for index in range(count):
        cls = 1 + index % others
        rest = tuple(c for c in range(1, others + 1) if c != cls)
        image, labels = few_shot_world(rng, size, present=(cls, rest[index % len(rest)]))
        support = AnnotatedImage(f"support-{seed}-{index}", image, (labels == cls).astype(np.int64),
                                 f"{seed:08x}{index:08x}")
        query, truth = few_shot_world(rng, size, present=rest if absent else (cls, rest[0]))
        episodes.append(Episode(support, query, truth == cls))
    return episodes


def label_episode(backbone, weights: str, episode: Episode, options: DiffewsOptions) -> np.ndarray:
    """(H', W') bool: the pixels of the query that DiffewS labels with the support's class."""
    segmenter = DiffewS(backbone, weights, [episode.support], ("background", "class"), options)
    return segmenter.label([episode.query])[0].label_map >= 0


def support_dependence(backbone, weights: str, episode: Episode, options: DiffewsOptions) -> tuple[float, float]:
    """Does the model read the support mask? The query's mean soft value on its true class pixels
    when the support marks the class, and when the same support image marks everything else.

    A model that copies the support's class gives a high first and a low second value; one that
    ignores the mask (it marks "objects" whatever the support says) gives two equal values.

    Returns:
        (soft value with the class support, soft value with the complement support), each the
        mean over ``episode.truth`` at the query's size; NaN for a query without the class.
    """
    support = episode.support
    labels = np.where(support.mask == 1, 1, 2).astype(np.int64)
    both = AnnotatedImage(support.name, support.image, labels, support.sha256)
    segmenter = DiffewS(backbone, weights, [both], ("background", "class", "rest"), options)
    soft = resize_soft_maps(segmenter.soft_maps([episode.query])[0], episode.truth.shape)
    if not episode.truth.any():
        return float("nan"), float("nan")
    truth = torch.from_numpy(episode.truth)
    return float(soft[0][truth].mean()), float(soft[1][truth].mean())


def one_shot_ious(backbone, weights: str, episodes: list[Episode], options: DiffewsOptions) -> list[float]:
    """Foreground IoU per episode (1.0 where both the truth and the prediction are empty)."""
    ious = []
    for episode in episodes:
        predicted = label_episode(backbone, weights, episode, options)
        union = (predicted | episode.truth).sum()
        ious.append(float((predicted & episode.truth).sum() / union) if union else 1.0)
    return ious
