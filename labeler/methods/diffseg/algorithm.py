"""DiffSeg: unsupervised segmentation from Stable Diffusion self-attention.

The first part of this module is the pure algorithm (no model code): per-resolution attention
aggregation, iterative KL merging of anchor proposals, and labeling by argmax over upsampled
proposals. It follows the reference code (google/diffseg @ 77ea596); docs/diffseg.md lists what runs
and the deliberate differences.

Shapes: ``B`` images, ``S`` the largest attention side, ``N = S * S`` pixels, ``K`` proposals.
Pixels are flattened row-major: pixel ``(i, j)`` is index ``i * S + j``.

Distance
    ``D(p, q) = 0.5 * sum((p - q) * (log p - log q))``, the mean of the two KL directions, on the
    same (halved) scale as the reference, so the reference thresholds (1.1 COCO, 0.9 Cityscapes)
    apply unchanged.

Epsilon policy
    Logs are taken of ``clamp(x, min=eps)`` with ``eps = 1e-12`` by default; the values themselves
    are never changed (so proposals still sum to 1, and a zero bin contributes ``0 * log(eps) = 0``
    to its own entropy term). The reference takes logs without any epsilon. That is only safe while
    every entry is positive: fp32 softmax outputs underflow to exactly 0 on very peaked rows, and
    ``0 * log 0 = 0 * -inf = NaN`` would poison every distance that touches such a row (a NaN never
    passes ``D < tau``, so an anchor could lose even itself). For strictly positive inputs above
    ``eps`` the result equals the reference formula.

Precision policy
    Everything is computed in at least fp32 (fp16/bf16 inputs are upcast). Distances use the exact
    GEMM reformulation of section 4.4 with TF32 / reduced-precision fp32 matmuls disabled for the
    duration (terms of size 8-30 cancel into D ~ 1, so TF32 could flip decisions near tau).
    Distances are clamped at >= 0, and self-distances (anchor vs its own row, proposal vs itself)
    are set to exactly 0 as in the elementwise form, so every anchor is a member of its own set.

Deviations from the reference (all deliberate)
    * Iteration 0 is not computed in fp16 and later iterations not in fp64: all distances are fp32
      GEMMs (max abs error ~4e-6 on 4096 bins). Rare decisions exactly at ``tau`` may differ.
    * The epsilon clamp above.
    * Any number of iterations ``>= 1`` is valid (the reference needs at least 2).
    * Thresholds must be positive (with ``tau <= 0`` the reference produces empty sets and 0/0).
    * Any set of attention sides whose largest side is a multiple of every other side works; the
      anchor grid formula is generalised to any side ``>= grid_points``, and proposals are
      upsampled to any ``(h, w)`` instead of a fixed x8.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from labeler.methods.diffseg.settings import (
    DEFAULT_EPS,
    DiffSegOptions,
    _check_eps,
    _check_positive_int,
    _check_thresholds,
    _normalise_weights,
)

__all__ = [
    "DEFAULT_EPS",
    "DiffSegOptions",
    "aggregate_attention",
    "anchor_grid",
    "default_weights",
    "full_precision_matmul",
    "labels_from_attention",
    "labels_from_proposals",
    "merge_proposals",
    "pairwise_symmetric_kl",
    "segment_attention",
    "symmetric_kl",
    "upsample_key_maps",
    "workspace",
]

PROPOSAL_CHUNK: int = 32
"""Proposals upsampled at once when labeling (bounds the (chunk, h, w) temporary)."""

LOG_ROWS: int = 512
"""Rows of P whose log iteration 0 takes at once (bounds that temporary to (B, LOG_ROWS, N))."""

"""Lower clamp applied to values before taking their log (see the module docstring)."""


# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# Numerics helpers
# --------------------------------------------------------------------------------------------


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    """At least fp32: fp16/bf16 go to fp32, fp64 stays fp64."""
    dtype = torch.float32
    for t in tensors:
        if not t.is_floating_point():
            raise ValueError(f"expected a floating-point tensor, got {t.dtype}")
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


@contextlib.contextmanager
def full_precision_matmul() -> Iterator[None]:
    """Disable TF32 / reduced-precision fp32 matmuls (CUDA and CPU oneDNN), then restore.

    Uses the per-backend ``fp32_precision`` API where torch has it (mixing it with the legacy
    ``allow_tf32`` flag makes torch raise), else ``allow_tf32`` plus the global matmul precision.
    Not thread-safe: the flags are process-global.
    """
    cuda_mm = torch.backends.cuda.matmul
    mkldnn_mm = getattr(torch.backends.mkldnn, "matmul", None)
    if hasattr(cuda_mm, "fp32_precision"):
        saved = [(cuda_mm, cuda_mm.fp32_precision)]
        if mkldnn_mm is not None and hasattr(mkldnn_mm, "fp32_precision"):
            saved.append((mkldnn_mm, mkldnn_mm.fp32_precision))
        try:
            for backend, _ in saved:
                backend.fp32_precision = "ieee"
            yield
        finally:
            for backend, value in saved:
                backend.fp32_precision = value
    else:  # pragma: no cover - torch without the fp32_precision API
        saved_tf32 = cuda_mm.allow_tf32
        saved_precision = torch.get_float32_matmul_precision()
        try:
            cuda_mm.allow_tf32 = False
            torch.set_float32_matmul_precision("highest")
            yield
        finally:
            torch.set_float32_matmul_precision(saved_precision)
            cuda_mm.allow_tf32 = saved_tf32


def _safe_log(x: Tensor, eps: float) -> Tensor:
    """``log(clamp(x, min=eps))`` in one new tensor; x itself is left unchanged."""
    return torch.clamp(x, min=eps).log_()


def _row_dot(x: Tensor, y: Tensor) -> Tensor:
    """``(x * y).sum(-1)`` without the (..., N) product: (B, K, N) twice -> (B, K)."""
    return torch.linalg.vecdot(x, y)


def _side_of(n: int) -> int:
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"pixel count {n} is not a perfect square")
    return side


# --------------------------------------------------------------------------------------------
# Aggregation (reference section 1.5)
# --------------------------------------------------------------------------------------------


def default_weights(sides: Sequence[int]) -> dict[int, float]:
    """Weights proportional to side: ``s / sum(sides)`` (64/120, 32/120, 16/120, 8/120 for SD)."""
    total = float(sum(sides))
    return {s: s / total for s in sides}


def upsample_key_maps(maps: Tensor, out_side: int) -> Tensor:
    """Bilinear (half-pixel, no antialias) upsampling of the key axes of attention maps.

    Args:
        maps: (B, s*s, s*s) attention, row = query, columns = keys (row-major s x s).
        out_side: target key side S (a multiple of s).

    Returns:
        (B, s*s, S*S) in at least fp32, **not** renormalised: with ``r = S / s`` every map's sum
        is multiplied by exactly ``r**2``.
    """
    batch, queries, keys = maps.shape
    side = _side_of(keys)
    maps = maps.to(_compute_dtype(maps))
    if side == out_side:
        return maps
    # One single-channel image per query: torch's bilinear kernel is several times faster on
    # (B*Q, 1, s, s) than on (B, Q, s, s) (same weights; results may differ in the last bit).
    images = maps.reshape(batch * queries, 1, side, side)
    up = F.interpolate(
        images, size=(out_side, out_side), mode="bilinear", align_corners=False, antialias=False
    )
    return up.reshape(batch, queries, out_side * out_side)


def _check_attention(attention: Mapping[int, Tensor]) -> tuple[int, int]:
    """Validate the per-side attention mapping; return (batch, largest side)."""
    if not attention:
        raise ValueError("attention must hold at least one resolution")
    batches = set()
    for side, maps in attention.items():
        _check_positive_int("attention side", side)
        n = side * side
        if maps.dim() != 3 or maps.shape[1] != n or maps.shape[2] != n:
            raise ValueError(
                f"attention[{side}] must have shape (B, {n}, {n}), got {tuple(maps.shape)}"
            )
        batches.add(maps.shape[0])
    if len(batches) != 1:
        raise ValueError(f"all resolutions must share the batch size, got {sorted(batches)}")
    largest = max(attention)
    bad = [s for s in attention if largest % s]
    if bad:
        raise ValueError(f"largest side {largest} is not a multiple of sides {bad}")
    return batches.pop(), largest


def _resolve_weights(sides: Sequence[int], weights: Mapping[int, float] | None) -> dict[int, float]:
    if weights is None:
        return default_weights(sides)
    checked = dict(_normalise_weights(weights) or ())
    stray = [s for s, w in checked.items() if s not in sides and w != 0]
    if stray:
        raise ValueError(f"weights given for sides {stray} absent from attention {sorted(sides)}")
    return {s: checked.get(s, 0.0) for s in sides}


def aggregate_attention(
    attention: Mapping[int, Tensor], weights: Mapping[int, float] | None = None,
    *, out: Tensor | None = None,
) -> Tensor:
    """Aggregate multi-resolution self-attention into one (B, N, N) matrix P.

    For each side ``s`` with ratio ``r = S / s``: key maps are bilinearly upsampled to S x S
    (half-pixel centres), each renormalised to sum 1, replicated over r x r query blocks (query
    ``(I, J)`` takes coarse query ``(I // r, J // r)``), weighted and summed.

    When every side (of non-zero weight) divides the next larger one (SD: 8, 16, 32, 64) the sum
    is built coarse to fine, each side's terms added to the coarser sum replicated over its query
    blocks, so the (B, N, N) result is written in one pass (:func:`_aggregate_chain`); otherwise
    each side is added into it in turn.

    Args:
        attention: ``{side: (B, side*side, side*side)}`` head/layer-averaged row-stochastic maps.
        weights: ``{side: weight}`` used as given (no renormalisation); sides missing from it get
            weight 0. None: weights proportional to side.
        out: where to write P, (B, N, N) contiguous, the compute dtype, on the attention's
            device (see :func:`workspace`); None allocates it. Reusing one buffer batch after
            batch spares the kernel zeroing B x N x N fresh pages per call (64 MiB an image at
            SD's 64x64, about 25 ms of CPU time).

    Returns:
        P: (B, N, N) with N = S*S, S the largest side, in at least fp32 (``out`` when given).
        With weights summing to 1 every row sums to 1.
    """
    batch, largest = _check_attention(attention)
    resolved = _resolve_weights(list(attention), weights)
    dtype = _compute_dtype(*attention.values())
    device = next(iter(attention.values())).device
    n = largest * largest
    if out is None:
        out = torch.empty(batch, n, n, dtype=dtype, device=device)
    elif out.shape != (batch, n, n) or out.dtype != dtype or out.device != device \
            or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous ({batch}, {n}, {n}) {dtype} tensor on "
                         f"{device}, got {tuple(out.shape)} {out.dtype} on {out.device}")
    sides = sorted(side for side in attention if resolved[side] != 0)
    if sides and all(finer % coarser == 0 for coarser, finer in itertools.pairwise(sides)):
        maps = {side: attention[side].to(device=device, dtype=dtype) for side in sides}
        return _aggregate_chain(maps, resolved, largest, out)
    out.zero_()
    for side in sides:
        maps = attention[side].to(device=device, dtype=dtype)
        _accumulate_side(out, maps, side, largest, resolved[side])
    return out


def _scaled_keys(maps: Tensor, largest: int, weight: float) -> tuple[Tensor, Tensor]:
    """One side's key maps upsampled to the largest side and its per-query factor.

    maps: (B, s*s, s*s). Returns up (B, s*s, N) and ``weight / row sum`` (B, s*s, 1).
    """
    up = upsample_key_maps(maps, largest)
    return up, weight / up.sum(dim=-1, keepdim=True)


def _aggregate_chain(maps: Mapping[int, Tensor], weights: Mapping[int, float],
                     largest: int, out: Tensor | None = None) -> Tensor:
    """:func:`aggregate_attention` for sides that each divide the next: coarse to fine.

    ``sum_s`` at side s is ``weight * renormalised keys`` of s plus the coarser sum replicated
    over s's query blocks: one ``addcmul`` per side writes each (B, s*s, N) sum once, so the
    (B, N, N) result costs one pass instead of one per side.

    maps: ``{side: (B, s*s, s*s)}`` in the compute dtype, every weight non-zero; out: the
    (B, N, N) result buffer (None allocates it). Returns (B, N, N).
    """
    batch, n = next(iter(maps.values())).shape[0], largest * largest
    first = next(iter(maps.values()))
    if out is None:
        out = torch.empty(batch, n, n, dtype=first.dtype, device=first.device)
    total = coarse = None
    sides = sorted(maps)
    for side in sides:
        up, scale = _scaled_keys(maps[side], largest, weights[side])
        # the largest side's sum is P itself: written straight into ``out``
        target = out if side == largest else None
        if total is None:
            total, coarse = torch.mul(up, scale, out=target), side
            continue
        ratio = side // coarse
        blocks = (batch, coarse, ratio, coarse, ratio)
        if target is None:
            target = torch.empty(batch, side * side, n, dtype=up.dtype, device=up.device)
        torch.addcmul(total.view(batch, coarse, 1, coarse, 1, n), up.view(*blocks, n),
                      scale.view(*blocks, 1), out=target.view(*blocks, n))
        total, coarse = target, side
    if coarse != largest:  # the largest side has weight 0: replicate the sum over its queries
        ratio = largest // coarse
        out.view(batch, coarse, ratio, coarse, ratio, n).copy_(
            total.view(batch, coarse, 1, coarse, 1, n))
    return out


def workspace(buffer: Tensor | None, attention: Mapping[int, Tensor]) -> Tensor:
    """The buffer to keep for :func:`aggregate_attention`'s ``out`` on ``attention``.

    Args:
        buffer: the previous call's workspace, or None.
        attention: ``{side: (B, side*side, side*side)}``, as for :func:`aggregate_attention`.

    Returns:
        ``buffer`` when it holds at least B (N, N) matrices of the compute dtype on the
        attention's device (pass ``out=buffer[:B]``; a smaller last batch reuses it), else a new
        (B, N, N) tensor.
    """
    maps = list(attention.values())
    batch, n = maps[0].shape[0], max(attention) ** 2
    dtype, device = _compute_dtype(*maps), maps[0].device
    if (buffer is not None and buffer.shape[0] >= batch and buffer.shape[1:] == (n, n)
            and buffer.dtype == dtype and buffer.device == device):
        return buffer
    return torch.empty(batch, n, n, dtype=dtype, device=device)


def _accumulate_side(out: Tensor, maps: Tensor, side: int, largest: int, weight: float) -> None:
    """``out += weight * replicate_queries(renormalise(upsample_keys(maps)))`` in place.

    out: (B, N, N); maps: (B, side*side, side*side).
    """
    batch, n = out.shape[0], out.shape[-1]
    ratio = largest // side
    up, scale = _scaled_keys(maps, largest, weight)  # (B, s*s, N), (B, s*s, 1)
    blocks = out.view(batch, side, ratio, side, ratio, n)
    blocks.addcmul_(up.view(batch, side, 1, side, 1, n), scale.view(batch, side, 1, side, 1, 1))


# --------------------------------------------------------------------------------------------
# Symmetric KL (reference sections 2.1 and 4.4)
# --------------------------------------------------------------------------------------------


def symmetric_kl(p: Tensor, q: Tensor, eps: float = DEFAULT_EPS) -> Tensor:
    """Elementwise ``D(p, q) = 0.5 * sum((p - q) * (log p - log q))`` over the last dim.

    Args:
        p, q: (..., N) distributions, broadcastable against each other.
        eps: lower clamp before the logs. ``D(p, p)`` is exactly 0.

    Returns:
        (...) distances in at least fp32.
    """
    dtype = _compute_dtype(p, q)
    p, q = p.to(dtype), q.to(dtype)
    return 0.5 * ((p - q) * (_safe_log(p, eps) - _safe_log(q, eps))).sum(dim=-1)


def pairwise_symmetric_kl(a: Tensor, p: Tensor, eps: float = DEFAULT_EPS) -> Tensor:
    """All-pairs symmetric KL by two GEMMs: ``D = 0.5 * (h_a 1' + 1 h_p' - A log P' - log A P')``.

    ``h`` are the rows' ``sum x log x``; the two products accumulate into one (B, K, M) result
    (no (B, M, 2N) concatenation of ``[log P, P]``); when ``p is a`` its log is taken once.

    Args:
        a: (B, K, N) distributions.
        p: (B, M, N) distributions.
        eps: lower clamp before the logs.

    Returns:
        (B, K, M) distances in at least fp32, clamped at >= 0 (TF32 disabled for the GEMM).
    """
    if a.dim() != 3 or p.dim() != 3 or a.shape[0] != p.shape[0] or a.shape[2] != p.shape[2]:
        raise ValueError(
            f"expected (B, K, N) and (B, M, N), got {tuple(a.shape)} and {tuple(p.shape)}"
        )
    dtype = _compute_dtype(a, p)
    same = p is a
    a = a.to(dtype)
    p = a if same else p.to(dtype)
    log_a = _safe_log(a, eps)
    log_p = log_a if same else _safe_log(p, eps)
    h_a = _row_dot(a, log_a)  # (B, K)
    h_p = h_a if same else _row_dot(p, log_p)  # (B, M)
    with full_precision_matmul():
        cross = torch.bmm(a, log_p.mT).baddbmm_(log_a, p.mT)  # (B, K, M)
    dist = 0.5 * (h_a.unsqueeze(-1) + h_p.unsqueeze(-2) - cross)
    return dist.clamp_(min=0)


# --------------------------------------------------------------------------------------------
# Anchors and merging (reference sections 2.2 - 2.5)
# --------------------------------------------------------------------------------------------


def anchor_grid(side: int, points: int = 16) -> Tensor:
    """Flat (row-major) indices of the ``points x points`` anchor query pixels.

    Per axis: ``step = (side - 1) // (points - 1)``, ``start = (side - 1 - step * (points - 1))
    // 2``, coordinates ``start + step * k`` (side 64, 16 points: 1, 5, ..., 61). One point sits at
    ``(side - 1) // 2``.

    Returns:
        (points * points,) int64 indices ``row * side + col``, rows major.
    """
    _check_positive_int("side", side)
    _check_positive_int("grid points", points)
    if side < points:
        raise ValueError(f"side {side} is smaller than grid points {points}")
    step = (side - 1) // (points - 1) if points > 1 else 0
    start = (side - 1 - step * (points - 1)) // 2
    coords = start + step * torch.arange(points)
    return (coords[:, None] * side + coords[None, :]).reshape(-1)


def _fill_self_distance(dist: Tensor, columns: Tensor) -> None:
    """Set ``dist[:, k, columns[k]] = 0`` in place (a distribution is at distance 0 from itself)."""
    rows = torch.arange(columns.numel(), device=dist.device)
    dist[:, rows, columns.to(dist.device)] = 0


def _member_means(members: Tensor, maps: Tensor) -> Tensor:
    """Mean of member maps: members (B, K, M) bool, maps (B, M, N) -> (B, K, N).

    Anchors with the same member set (common in flat regions: a quarter of iteration 0's on
    blocky attention) share one GEMM row: per image only its distinct sets are averaged, then
    gathered back to the anchors. A GEMM row does not depend on the other rows, so the means are
    bit-identical to averaging every anchor's set.
    """
    means = torch.empty(*members.shape[:2], maps.shape[-1], dtype=maps.dtype, device=maps.device)
    with full_precision_matmul():
        for image in range(members.shape[0]):
            distinct, inverse = torch.unique(members[image], dim=0, return_inverse=True)
            weights = distinct.to(maps.dtype)
            weights /= weights.sum(dim=-1, keepdim=True)
            torch.index_select(weights @ maps[image], 0, inverse, out=means[image])
    return means


def _anchor_distances(P: Tensor, anchors: Tensor, eps: float) -> Tensor:
    """``pairwise_symmetric_kl(anchors, P)`` without P's whole log: (B, K, N).

    ``log P`` is taken ``LOG_ROWS`` rows at a time into one reused buffer; each block gives its
    rows' entropy terms and its columns of ``A log P'``, added to ``log A P'``.

    P: (B, N, N) in the compute dtype; anchors: (B, K, N), rows of P.
    """
    batch, n = P.shape[0], P.shape[-1]
    log_anchors = _safe_log(anchors, eps)
    h_anchors = _row_dot(anchors, log_anchors)  # (B, K)
    h_rows = torch.empty(batch, n, dtype=P.dtype, device=P.device)
    buffer = torch.empty(batch, min(LOG_ROWS, n), n, dtype=P.dtype, device=P.device)
    with full_precision_matmul():
        cross = torch.bmm(log_anchors, P.mT)  # (B, K, N)
        for start in range(0, n, LOG_ROWS):
            rows = P[:, start : start + LOG_ROWS]
            log_rows = torch.clamp(rows, min=eps, out=buffer[:, : rows.shape[1]]).log_()
            h_rows[:, start : start + rows.shape[1]] = _row_dot(rows, log_rows)
            cross[:, :, start : start + rows.shape[1]].baddbmm_(anchors, log_rows.mT)
    dist = 0.5 * (h_anchors.unsqueeze(-1) + h_rows.unsqueeze(-2) - cross)
    return dist.clamp_(min=0)


def _first_iteration(P: Tensor, grid: Tensor, tau: float, eps: float) -> Tensor:
    """Iteration 0: each anchor row against all rows; proposals = means of members (D < tau).

    P: (B, N, N); grid: (K,) anchor rows. Returns (B, K, N).
    """
    anchors = P[:, grid.to(P.device)]  # (B, K, N)
    dist = _anchor_distances(P, anchors, eps)  # (B, K, N)
    _fill_self_distance(dist, grid)
    return _member_means(dist < tau, P)


def _greedy_anchors(close: np.ndarray) -> list[int]:
    """Greedy pass in index order over a (K, K) bool matrix: unmatched i becomes an anchor and
    marks all j with close[i, j] as matched. Returns the anchors."""
    matched = np.zeros(close.shape[0], dtype=bool)
    anchors = []
    for i in range(close.shape[0]):
        if not matched[i]:
            anchors.append(i)
            matched |= close[i]
    return anchors


def _greedy_reduce(proposals: Tensor, dist: Tensor, tau: float) -> Tensor:
    """One greedy reduction (iterations >= 1) with overlapping membership.

    proposals: (K, N); dist: (K, K) distances among them. Returns (K', N), K' <= K.
    """
    close = dist < tau
    close.fill_diagonal_(True)
    anchors = _greedy_anchors(close.cpu().numpy())
    rows = torch.tensor(anchors, dtype=torch.long, device=close.device)
    return _member_means(close[rows].unsqueeze(0), proposals.unsqueeze(0))[0]


def _distances_within(proposals: list[Tensor], eps: float) -> list[Tensor]:
    """(K_b, K_b) pairwise distances per image; one batched GEMM when all K_b are equal."""
    if len({p.shape[0] for p in proposals}) == 1:
        stacked = torch.stack(proposals)
        return list(pairwise_symmetric_kl(stacked, stacked, eps).unbind(0))
    return [pairwise_symmetric_kl(p[None], p[None], eps)[0] for p in proposals]


def merge_proposals(
    P: Tensor,
    thresholds: Sequence[float] = (1.1, 1.1, 1.1),
    grid_points: int = 16,
    *,
    eps: float = DEFAULT_EPS,
) -> list[Tensor]:
    """Iterative attention merging: iteration 0 against all rows, then greedy reductions.

    Args:
        P: (B, N, N) aggregated attention (rows = query pixels, distributions over keys).
        thresholds: tau per iteration; its length is the number of iterations (>= 1). Membership
            is strict ``D < tau``.
        grid_points: anchors per axis.
        eps: lower clamp before the logs.

    Returns:
        One (K_b, N) tensor of proposals (distributions over key pixels) per image; K_b =
        ``grid_points ** 2`` after iteration 0 and non-increasing afterwards.
    """
    taus = _check_thresholds(thresholds)
    eps = _check_eps(eps)
    if P.dim() != 3 or P.shape[1] != P.shape[2]:
        raise ValueError(f"P must have shape (B, N, N), got {tuple(P.shape)}")
    P = P.to(_compute_dtype(P))
    grid = anchor_grid(_side_of(P.shape[-1]), grid_points)
    # one image at a time: the (LOG_ROWS, N) block of log P stays in the cache (a batch's
    # B x 8 MB block did not: ~15 % slower per image at batch 4 on one core)
    proposals = [_first_iteration(P[i:i + 1], grid, taus[0], eps)[0] for i in range(len(P))]
    for tau in taus[1:]:
        dists = _distances_within(proposals, eps)
        proposals = [_greedy_reduce(p, d, tau) for p, d in zip(proposals, dists)]
    return proposals


# --------------------------------------------------------------------------------------------
# Labeling (reference section 2.7) and entry points
# --------------------------------------------------------------------------------------------


def _output_hw(output_size: int | tuple[int, int]) -> tuple[int, int]:
    hw = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    if len(hw) != 2:
        raise ValueError(f"output_size must be an int or (h, w), got {output_size!r}")
    for v in hw:
        _check_positive_int("output size", v)
    return hw[0], hw[1]


def labels_from_proposals(
    proposals: Tensor,
    side: int,
    output_size: int | tuple[int, int],
    chunk: int = PROPOSAL_CHUNK,
) -> tuple[Tensor, Tensor]:
    """Bilinear upsampling (half-pixel) of the proposal maps, then argmax over proposals.

    Proposals are upsampled ``chunk`` at a time with a running maximum, so memory stays at
    ``chunk * h * w`` floats instead of ``K * h * w`` (256 proposals at 1024x1024 would be 1 GiB).

    Args:
        proposals: (K, side*side) maps over key pixels.
        side: key grid side.
        output_size: h = w, or (h, w).
        chunk: proposals upsampled at once.

    Returns:
        labels: (h, w) int64 proposal indices in [0, K-1] (first maximum wins on ties).
        confidence: (h, w) fp32 winning value / sum over proposals at that pixel (0 where the
            sum is 0).
    """
    if proposals.dim() != 2 or proposals.shape[1] != side * side or proposals.shape[0] < 1:
        raise ValueError(
            f"proposals must have shape (K >= 1, {side * side}), got {tuple(proposals.shape)}"
        )
    h, w = _output_hw(output_size)
    maps = proposals.to(_compute_dtype(proposals)).reshape(1, -1, side, side)
    best = labels = total = None
    for start in range(0, maps.shape[1], chunk):
        up = F.interpolate(
            maps[:, start : start + chunk],
            size=(h, w),
            mode="bilinear",
            align_corners=False,
            antialias=False,
        )[0]
        chunk_best, chunk_labels = up.max(dim=0)  # first maximum within the chunk
        if best is None:
            best, labels, total = chunk_best, chunk_labels, up.sum(dim=0)
            continue
        better = chunk_best > best  # strict: an earlier proposal keeps ties
        best = torch.where(better, chunk_best, best)
        labels = torch.where(better, chunk_labels + start, labels)
        total += up.sum(dim=0)
    confidence = torch.where(total > 0, best / total.clamp(min=torch.finfo(total.dtype).tiny), 0)
    return labels, confidence.to(torch.float32)


def segment_attention(
    attention: Mapping[int, Tensor],
    output_size: int | tuple[int, int] = 512,
    options: DiffSegOptions | None = None,
) -> tuple[Tensor, Tensor]:
    """Aggregation + merging + labeling for a batch.

    Args:
        attention: ``{side: (B, side*side, side*side)}`` row-stochastic self-attention.
        output_size: h = w, or (h, w), of the label maps.
        options: hyper-parameters (reference defaults when None).

    Returns:
        labels (B, h, w) int64 and confidence (B, h, w) fp32 (see ``labels_from_proposals``).
    """
    options = options or DiffSegOptions()
    P = aggregate_attention(attention, options.weight_map)
    side = _side_of(P.shape[-1])
    proposals = merge_proposals(P, options.schedule, options.grid_points, eps=options.eps)
    results = [labels_from_proposals(p, side, output_size) for p in proposals]
    return torch.stack([r[0] for r in results]), torch.stack([r[1] for r in results])


def labels_from_attention(
    attention: Mapping[int, Tensor],
    output_size: int | tuple[int, int] = 512,
    *,
    kl_threshold: float = 1.1,
    iterations: int = 3,
    grid_points: int = 16,
    weights: Mapping[int, float] | None = None,
    thresholds: Sequence[float] | None = None,
) -> Tensor:
    """DiffSeg label maps from multi-resolution self-attention (the library entry point).

    Args:
        attention: ``{side: (B, side*side, side*side)}`` head- and layer-averaged row-stochastic
            self-attention (row = query pixel, column = key pixel, row-major).
        output_size: h = w, or (h, w), of the label maps.
        kl_threshold: tau for every iteration (reference: 1.1 COCO, 0.9 Cityscapes).
        iterations: number of merge iterations (>= 1).
        grid_points: anchors per axis.
        weights: per-side aggregation weights, used as given; None: proportional to side.
        thresholds: explicit per-iteration taus; overrides kl_threshold and iterations.

    Returns:
        (B, h, w) int64 segment ids (proposal indices, not necessarily contiguous).
    """
    options = DiffSegOptions(
        kl_threshold=kl_threshold,
        iterations=iterations,
        grid_points=grid_points,
        weights=weights,
        thresholds=None if thresholds is None else tuple(thresholds),
    )
    return segment_attention(attention, output_size, options)[0]
