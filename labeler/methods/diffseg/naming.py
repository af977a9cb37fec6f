"""Naming DiffSeg's segments from a vocabulary, read from cross-attention: the pure parts.

The UNet row that carries the names is conditioned on one context holding every name's tokens
(:func:`pack_names`): each name is encoded alone (``[BOS] name [EOS]``), so its states do not
depend on the other names or their order, and the states of all its tokens are packed after one
BOS, followed by the empty prompt's EOS and padding states. The cross-attention (``attn2``) of
that row, head- and layer-averaged per resolution, gives per pixel the share of the text
attention each name takes: the sum over **all** the name's tokens (a name the tokenizer splits
into several tokens counts every one; the reference takes word index + 1). Each resolution is
resized bilinearly to the label grid and the resolutions are averaged with equal weights (the
reference adds them with weight 1 and renormalises over the 77 tokens, which is the same mean; it
also adds its 64x64 down layers with 1/5 and up layers with 1/3, where labeler takes the layer
mean): :func:`name_shares`.

A segment is named by :func:`name_segments`:

1. the segment's evidence for a name is the name's mean share over the segment's pixels;
2. the best name is the one with the highest evidence (the reference normalises each name's map
   spatially first, L2 over the image; that amplifies the faint map of a name whose colour or
   object is absent wherever it is faintest-but-present, e.g. "purple" on the border of a red and
   a blue shape, so labeler compares the shares themselves);
3. the segment **abstains** (no name) when the best name's mean share is below ``share`` (no name
   explains it: the text attention there goes to the BOS sink and padding) or below ``margin`` x
   the second name's (two names claim it).

The annotation's name score is the best name's mean share over the segment, in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from labeler.methods.diffseg.settings import DEFAULT_NAME_MARGIN, DEFAULT_NAME_SHARE


@dataclass(frozen=True)
class NameRule:
    """When a segment takes its best name (see the module docstring).

    Attributes:
        share: minimum mean share of the text attention the name takes over the segment, [0, 1].
        margin: minimum ratio of the best name's mean share to the second best's, >= 1.
    """

    share: float = DEFAULT_NAME_SHARE
    margin: float = DEFAULT_NAME_MARGIN


def pack_names(name_states: list[Tensor], empty: Tensor) -> tuple[Tensor, list[tuple[int, int]]]:
    """One context row holding every name's token states.

    Args:
        name_states: per name, (L_i, D) the text-encoder states of the name's own tokens (encoded
            alone, BOS and EOS left out).
        empty: (T, D) the empty prompt's states (BOS, then EOS and padding).

    Returns:
        context (T, D): the BOS state, every name's tokens in order, then the empty prompt's
        states from position ``1 + sum(L_i)`` on; and each name's ``(start, stop)`` positions.

    Raises:
        ValueError: the names need more than ``T - 2`` tokens (one EOS state is kept).
    """
    total = sum(len(states) for states in name_states)
    if total > len(empty) - 2:
        raise ValueError(f"the names take {total} tokens; at most {len(empty) - 2} fit one prompt")
    spans, start = [], 1
    for states in name_states:
        spans.append((start, start + len(states)))
        start += len(states)
    rows = [empty[:1], *[states.to(empty.dtype) for states in name_states], empty[1 + total:]]
    return torch.cat(rows), spans


def name_shares(cross: dict[int, Tensor], spans: list[tuple[int, int]], size: tuple[int, int]) -> Tensor:
    """Per pixel, the share of the text attention each name's tokens take.

    Args:
        cross: ``{side: (B, side*side, T)}`` head- and layer-mean cross-attention per query-grid
            side (rows sum to 1 over the T tokens, row-major pixels).
        spans: each name's ``(start, stop)`` token positions.
        size: (h, w) of the output grid.

    Returns:
        (B, N, h, w) float32 in [0, 1]: per side, the sum over each name's tokens, resized
        bilinearly (half-pixel centres) to ``size``, then the mean over sides.
    """
    total = None
    for side, maps in cross.items():
        per_name = torch.stack([maps[..., a:b].float().sum(-1) for a, b in spans], dim=1)
        per_name = per_name.reshape(per_name.shape[0], len(spans), side, side)
        resized = F.interpolate(per_name, size=size, mode="bilinear", align_corners=False)
        total = resized if total is None else total + resized
    return (total / len(cross)).clamp(0.0, 1.0)


def name_segments(labels: Tensor, shares: Tensor, rule: NameRule) -> tuple[Tensor, Tensor]:
    """The name of every segment of one image, or -1 where it abstains.

    Args:
        labels: (h, w) integer segment ids, negative for no segment.
        shares: (N, h, w) per-pixel name shares (:func:`name_shares`) on the same grid.

    Returns:
        names (L,) int64, the name index per segment id 0..L-1 (L = max id + 1), -1 when the
        segment abstains or covers no pixel; and scores (L,) float32, the best name's mean share
        over the segment (0 for ids that cover no pixel).
    """
    count = int(labels.max()) + 1 if labels.numel() else 0
    if count <= 0 or shares.shape[0] == 0:
        return torch.full((max(count, 0),), -1, dtype=torch.long), torch.zeros(max(count, 0))
    inside = labels.flatten() >= 0
    ids = labels.flatten()[inside].long()
    flat = shares.flatten(1).float()  # (N, P)
    pixels = torch.zeros(count, device=flat.device).index_add_(0, ids, torch.ones_like(ids, dtype=torch.float32))
    area = pixels.clamp_min(1.0)[:, None]
    mean_share = torch.zeros(count, len(flat), device=flat.device).index_add_(0, ids, flat[:, inside].T) / area
    ranked, order = mean_share.sort(dim=1, descending=True, stable=True)
    best, score = order[:, 0], ranked[:, 0]
    second = ranked[:, 1] if len(flat) > 1 else torch.zeros_like(score)
    named = (pixels > 0) & (score >= rule.share) & (score >= rule.margin * second)
    return torch.where(named, best, torch.full_like(best, -1)), torch.where(pixels > 0, score, 0.0)
