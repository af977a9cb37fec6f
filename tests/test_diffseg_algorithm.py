"""Tests of the pure DiffSeg algorithm (reference spec section 7, items 5-27).

Slow reference implementations below are written independently of the module under test
(numpy, float64, explicit loops) so that a wrong formula in the module shows up as a mismatch.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labeler.methods.diffseg.algorithm import (
    DEFAULT_EPS,
    DiffSegOptions,
    aggregate_attention,
    anchor_grid,
    default_weights,
    full_precision_matmul,
    labels_from_attention,
    labels_from_proposals,
    merge_proposals,
    pairwise_symmetric_kl,
    segment_attention,
    symmetric_kl,
    upsample_key_maps,
)

# --------------------------------------------------------------------------------------------
# Fixtures and slow reference implementations
# --------------------------------------------------------------------------------------------


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _stochastic(batch: int, rows: int, cols: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    """(batch, rows, cols) fp32 rows that sum to 1."""
    logits = torch.randn(batch, rows, cols, generator=_gen(seed)) * scale
    return torch.softmax(logits, dim=-1)


def _attention(sides: Sequence[int], batch: int = 2, seed: int = 0, scale: float = 2.0):
    return {s: _stochastic(batch, s * s, s * s, seed + s, scale) for s in sides}


def _interp_matrix(src: int, dst: int) -> np.ndarray:
    """(dst, src) 1-D bilinear weights with half-pixel centres and edge clamping (TF2 / PyTorch
    align_corners=False)."""
    out = np.zeros((dst, src))
    for d in range(dst):
        x = max((d + 0.5) * src / dst - 0.5, 0.0)
        i0 = min(math.floor(x), src - 1)
        i1 = min(i0 + 1, src - 1)
        lam = x - i0
        out[d, i0] += 1 - lam
        out[d, i1] += lam
    return out


def _slow_aggregate(attention: Mapping[int, torch.Tensor], weights: Mapping[int, float]):
    """Literal per-query loop over section 1.5, float64 numpy. Returns (B, N, N)."""
    big = max(attention)
    n = big * big
    batch = next(iter(attention.values())).shape[0]
    out = np.zeros((batch, n, n))
    for side, maps in attention.items():
        w = weights.get(side, 0.0)
        r = big // side
        u = _interp_matrix(side, big)
        m = maps.double().numpy()
        for b in range(batch):
            for qi in range(big):
                for qj in range(big):
                    coarse = (qi // r) * side + qj // r
                    key_img = u @ m[b, coarse].reshape(side, side) @ u.T
                    out[b, qi * big + qj] += w * (key_img / key_img.sum()).reshape(-1)
    return out


def _np_kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """0.5 * sum((p - q)(log p - log q)) over the last axis, float64, logs of clamp(eps)."""
    lp = np.log(np.maximum(p, DEFAULT_EPS))
    lq = np.log(np.maximum(q, DEFAULT_EPS))
    return 0.5 * ((p - q) * (lp - lq)).sum(-1)


def _literal_merge(p: np.ndarray, taus: Sequence[float], points: int):
    """Reference semantics of section 2.3-2.4 with explicit loops (float64).

    Returns (proposals (K, N), smallest |D - tau| seen over all decisions).
    """
    side = math.isqrt(p.shape[0])
    step = (side - 1) // (points - 1) if points > 1 else 0
    start = (side - 1 - step * (points - 1)) // 2
    coords = [start + step * k for k in range(points)]
    grid = [i * side + j for i in coords for j in coords]
    margin = math.inf
    proposals = []
    for k in grid:  # iteration 0: each anchor against every row
        d = _np_kl(p[k][None, :], p)
        margin = min(margin, float(np.abs(d - taus[0]).min()))
        proposals.append(p[d < taus[0]].mean(axis=0))
    for tau in taus[1:]:  # greedy reductions
        old = np.stack(proposals)
        matched = [False] * len(old)
        proposals = []
        for i in range(len(old)):
            if matched[i]:
                continue
            members = []
            for j in range(len(old)):
                d = float(_np_kl(old[i], old[j]))
                margin = min(margin, abs(d - tau))
                if d < tau:
                    members.append(j)
                    matched[j] = True
            proposals.append(old[members].mean(axis=0))
    return np.stack(proposals), margin


def _quadrant_ids(side: int) -> torch.Tensor:
    """(side*side,) quadrant index per row-major pixel."""
    ii, jj = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    half = side // 2
    return ((ii >= half).long() * 2 + (jj >= half).long()).reshape(-1)


def _block_attention(side: int, seed: int, boost: float = 4.0, noise: float = 1.0):
    """(1, N, N): logits N(0, noise^2) plus `boost` on the row's own quadrant, softmax."""
    quad = _quadrant_ids(side)
    n = side * side
    logits = torch.randn(n, n, generator=_gen(seed)) * noise
    logits += boost * (quad[:, None] == quad[None, :]).float()
    return torch.softmax(logits, dim=-1)[None]


@pytest.fixture(scope="module")
def block64() -> torch.Tensor:
    """Synthetic fixture of spec item 27: 64x64 grid, 4 quadrants, seeded."""
    return _block_attention(64, seed=27)


# --------------------------------------------------------------------------------------------
# Aggregation (items 5-10)
# --------------------------------------------------------------------------------------------


def test_aggregate_shape_dtype_nonnegative():
    att = _attention((16, 8, 4), batch=2)
    P = aggregate_attention(att)
    assert P.shape == (2, 256, 256)
    assert P.dtype == torch.float32
    assert (P >= 0).all()


def test_default_weights_proportional_to_side():
    w = default_weights([64, 32, 16, 8])
    assert w == pytest.approx({64: 64 / 120, 32: 32 / 120, 16: 16 / 120, 8: 8 / 120})


def test_default_weights_rows_sum_to_one():
    P = aggregate_attention(_attention((16, 8, 4, 2), batch=2, scale=4.0))
    assert torch.allclose(P.sum(-1), torch.ones(2, 256), atol=1e-5)


@pytest.mark.parametrize("side,ratio", [(8, 2), (4, 4), (4, 8), (8, 8)])
def test_half_pixel_upsampling_multiplies_sums_by_r_squared(side, ratio):
    maps = _stochastic(2, side * side, side * side, seed=ratio, scale=3.0)
    up = upsample_key_maps(maps, side * ratio)
    assert up.shape == (2, side * side, (side * ratio) ** 2)
    assert torch.allclose(up.sum(-1), torch.full((2, side * side), ratio**2.0), rtol=1e-5)
    # The same check discriminates the interpolation convention: align_corners=True fails it.
    img = maps.reshape(2, side * side, side, side)
    corners = F.interpolate(img, scale_factor=ratio, mode="bilinear", align_corners=True)
    assert not torch.allclose(corners.sum((-1, -2)), torch.full((2, side * side), ratio**2.0))


def test_single_resolution_weight_gives_constant_query_blocks():
    att = _attention((16, 8, 4), batch=2)
    P = aggregate_attention(att, {4: 1.0})
    blocks = P.view(2, 4, 4, 4, 4, 256)  # (B, i, a, j, b, N), query = (4i + a, 4j + b)
    assert torch.equal(blocks, blocks[:, :, :1, :, :1].expand_as(blocks))
    # Replication is element-wise (repeat_interleave): block (i, j) holds coarse query (i, j).
    coarse = upsample_key_maps(att[4], 16)
    coarse = coarse / coarse.sum(-1, keepdim=True)
    assert torch.allclose(blocks[:, :, 0, :, 0].reshape(2, 16, 256), coarse, atol=1e-7)
    # ... and nothing similar for the 8-side weight at the 4x4 block level.
    P8 = aggregate_attention(att, {8: 1.0}).view(2, 4, 4, 4, 4, 256)
    assert not torch.allclose(P8, P8[:, :, :1, :, :1].expand_as(P8))


def test_only_largest_side_weight_one_equals_input():
    att = _attention((16, 8), batch=2)
    P = aggregate_attention(att, {16: 1.0})
    assert torch.allclose(P, att[16], atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize(
    "weights", [None, {8: 0.7, 4: 0.5, 2: 0.3}, {8: 0.0, 4: 1.0, 2: 0.25}], ids=str
)
def test_aggregate_matches_slow_loop(weights):
    att = _attention((8, 4, 2), batch=2, seed=3, scale=2.5)
    P = aggregate_attention(att, weights)
    expected = _slow_aggregate(att, weights or default_weights(list(att)))
    np.testing.assert_allclose(P.double().numpy(), expected, atol=1e-7, rtol=1e-5)


def test_user_weights_used_as_given():
    att = _attention((8, 4), batch=1)
    P = aggregate_attention(att, {8: 1.5, 4: 0.5})
    assert torch.allclose(P.sum(-1), torch.full((1, 64), 2.0), atol=1e-5)


def test_aggregate_accepts_half_precision_and_upcasts():
    att = _attention((8, 4), batch=2)
    half = {s: m.half() for s, m in att.items()}
    P = aggregate_attention(half)
    assert P.dtype == torch.float32
    ref = aggregate_attention({s: m.float() for s, m in half.items()})
    assert torch.equal(P, ref)


def test_aggregate_validation():
    att = _attention((8, 4), batch=2)
    with pytest.raises(ValueError):
        aggregate_attention({8: att[8][:, :10]})
    with pytest.raises(ValueError):
        aggregate_attention({8: att[8], 4: att[4][:1]})
    with pytest.raises(ValueError):
        aggregate_attention({6: _stochastic(1, 36, 36, 0), 4: _stochastic(1, 16, 16, 0)})
    with pytest.raises(ValueError):
        aggregate_attention(att, {8: -1.0, 4: 1.0})
    with pytest.raises(ValueError):
        aggregate_attention(att, {64: 1.0})
    with pytest.raises(ValueError):
        aggregate_attention({})


# --------------------------------------------------------------------------------------------
# KL (items 11-14)
# --------------------------------------------------------------------------------------------


def _random_dists(shape, seed, scale=3.0):
    return torch.softmax(torch.randn(*shape, generator=_gen(seed)) * scale, dim=-1)


def test_symmetric_kl_self_is_exactly_zero():
    p = _random_dists((4, 6, 128), seed=1, scale=20.0)  # includes underflowed exact zeros
    p[0, 0] = torch.zeros(128)
    p[0, 0, 3] = 1.0
    assert torch.equal(symmetric_kl(p, p), torch.zeros(4, 6))


def test_symmetric_kl_symmetric_and_nonnegative():
    p = _random_dists((5, 64), seed=2)
    q = _random_dists((7, 1, 64), seed=3)
    d = symmetric_kl(p, q)  # broadcasts to (7, 5)
    assert d.shape == (7, 5)
    assert torch.equal(d, symmetric_kl(q, p))
    assert (d >= 0).all()
    expected = _np_kl(p.double().numpy()[None], q.double().numpy())
    np.testing.assert_allclose(d.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_symmetric_kl_two_point_closed_form():
    a = torch.tensor([0.1, 0.3, 0.5, 0.9, 0.999])
    b = torch.tensor([0.6, 0.3, 0.25, 0.2, 0.001])
    p = torch.stack([a, 1 - a], -1).double()
    q = torch.stack([b, 1 - b], -1).double()
    closed = 0.5 * (a - b).double() * torch.log(a * (1 - b) / (b * (1 - a))).double()
    assert torch.allclose(symmetric_kl(p, q), closed, atol=1e-12)
    assert torch.allclose(pairwise_symmetric_kl(p[None], q[None])[0].diagonal(), closed, atol=1e-9)


def test_zero_entries_use_the_eps_clamp():
    p = torch.tensor([1.0, 0.0])
    q = torch.tensor([0.5, 0.5])
    # 0.5 * [0.5 * (0 - ln .5) + (-0.5) * (ln eps - ln .5)] = -0.25 * ln eps
    expected = -0.25 * math.log(DEFAULT_EPS)
    assert symmetric_kl(p, q).item() == pytest.approx(expected, rel=1e-6)
    assert pairwise_symmetric_kl(p[None, None], q[None, None]).item() == pytest.approx(
        expected, rel=1e-5
    )


def test_gemm_form_matches_elementwise():
    a = _random_dists((2, 5, 256), seed=4, scale=4.0)
    p = _random_dists((2, 7, 256), seed=5, scale=4.0)
    a[0, 1] = p[0, 3]  # an exact duplicate pair
    p[1, 2] = 0.0  # a row with exact zeros (not a distribution, still must be finite)
    p[1, 2, :2] = 0.5
    gemm = pairwise_symmetric_kl(a, p)
    assert gemm.shape == (2, 5, 7)
    elementwise = symmetric_kl(a[:, :, None, :], p[:, None, :, :])
    assert torch.isfinite(gemm).all()
    assert torch.allclose(gemm, elementwise, atol=1e-5, rtol=1e-5)
    assert (gemm >= 0).all()
    assert gemm[0, 1, 3] < 1e-5


def test_kl_invariant_under_common_bin_permutation():
    a = _random_dists((1, 4, 100), seed=6)
    p = _random_dists((1, 6, 100), seed=7)
    perm = torch.randperm(100, generator=_gen(8))
    assert torch.allclose(
        pairwise_symmetric_kl(a, p), pairwise_symmetric_kl(a[..., perm], p[..., perm]), atol=1e-5
    )
    b = a.flip(1)
    assert torch.allclose(symmetric_kl(a, b), symmetric_kl(a[..., perm], b[..., perm]))


_NEW_PRECISION_API = hasattr(torch.backends.cuda.matmul, "fp32_precision")


@pytest.mark.skipif(not _NEW_PRECISION_API, reason="torch without the fp32_precision API")
def test_full_precision_context_sets_and_restores_flags():
    before = torch.backends.cuda.matmul.fp32_precision
    with full_precision_matmul():
        assert torch.backends.cuda.matmul.fp32_precision == "ieee"
        assert torch.backends.mkldnn.matmul.fp32_precision == "ieee"
    assert torch.backends.cuda.matmul.fp32_precision == before


def test_full_precision_context_keeps_a_user_global_setting():
    saved = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")  # the legacy global API, as users call it
        pairwise_symmetric_kl(_random_dists((1, 2, 8), 0), _random_dists((1, 3, 8), 1))
        assert torch.get_float32_matmul_precision() == "high"
        assert torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.set_float32_matmul_precision(saved)


# --------------------------------------------------------------------------------------------
# Anchor grid (item 15)
# --------------------------------------------------------------------------------------------


def test_anchor_grid_reference_default():
    grid = anchor_grid(64, 16)
    assert grid.shape == (256,)
    assert grid.dtype == torch.int64
    coords = list(range(1, 62, 4))
    expected = [r * 64 + c for r in coords for c in coords]  # row-major
    assert grid.tolist() == expected
    k = torch.arange(256)
    assert torch.equal(grid, (1 + 4 * (k // 16)) * 64 + 1 + 4 * (k % 16))


def test_anchor_grid_other_sizes():
    coords = (0, 5, 10, 15)  # step 15 // 3 = 5, start 0
    assert anchor_grid(16, 4).tolist() == [r * 16 + c for r in coords for c in coords]
    assert anchor_grid(8, 8).tolist() == list(range(64))
    assert anchor_grid(32, 16).tolist()[:3] == [0, 2, 4]  # step 2, start 0
    assert anchor_grid(9, 1).tolist() == [4 * 9 + 4]
    with pytest.raises(ValueError):
        anchor_grid(8, 16)


# --------------------------------------------------------------------------------------------
# Iteration 0 (items 16-18)
# --------------------------------------------------------------------------------------------


def test_iteration_zero_count_and_sums():
    P = _attention((16,), batch=2, scale=1.0)[16]
    for tau in (0.05, 0.5, 1e6):
        proposals = merge_proposals(P, (tau,), grid_points=4)
        assert len(proposals) == 2
        for prop in proposals:
            assert prop.shape == (16, 256)
            assert torch.allclose(prop.sum(-1), torch.ones(16), atol=1e-5)


def test_iteration_zero_tiny_tau_returns_anchors():
    P = _attention((16,), batch=2, scale=20.0)[16]  # peaked rows, many exact zeros
    grid = anchor_grid(16, 4)
    proposals = merge_proposals(P, (1e-9,), grid_points=4)
    for b in range(2):
        assert torch.equal(proposals[b], P[b, grid])


def test_iteration_zero_huge_tau_gives_mean_of_all_rows():
    P = _attention((8,), batch=1)[8]
    (prop,) = merge_proposals(P, (1e6,), grid_points=4)
    assert prop.shape == (16, 64)
    assert torch.allclose(prop, P[0].mean(0, keepdim=True).expand(16, 64), atol=1e-6)


# --------------------------------------------------------------------------------------------
# Later iterations (items 19-23)
# --------------------------------------------------------------------------------------------


def test_count_non_increasing_over_iterations():
    P = _block_attention(16, seed=11, boost=3.0, noise=1.0)
    counts = [merge_proposals(P, (0.6,) * n, grid_points=8)[0].shape[0] for n in range(1, 5)]
    assert counts[0] == 64
    assert all(a >= b for a, b in itertools.pairwise(counts))
    assert counts[-1] < counts[0]


def test_overlapping_membership():
    n = 16  # side 4, grid_points 2 -> anchors at rows 0, 3, 12, 15
    x = _random_dists((n,), seed=20, scale=1.0)
    y = _random_dists((n,), seed=21, scale=1.0)
    mid = 0.5 * (x + y)
    far = torch.full((n,), 1e-3)
    far[7] = 1.0 - 1e-3 * (n - 1)
    P = _random_dists((1, n, n), seed=22)
    P[0, 0], P[0, 3], P[0, 12], P[0, 15] = x, mid, y, far
    d_xm, d_my, d_xy = (symmetric_kl(u, v).item() for u, v in ((x, mid), (mid, y), (x, y)))
    tau = 1.1 * max(d_xm, d_my)
    assert tau < d_xy and tau < symmetric_kl(far, mid).item()  # fixture sanity
    (prop,) = merge_proposals(P, (1e-9, tau), grid_points=2)
    assert prop.shape == (3, n)
    assert torch.allclose(prop[0], 0.5 * (x + mid), atol=1e-6)  # anchor x takes mid
    assert torch.allclose(prop[1], 0.5 * (mid + y), atol=1e-6)  # mid enters a second mean
    assert torch.allclose(prop[2], far, atol=1e-6)


def test_huge_tau_later_iteration_gives_single_mean():
    P = _attention((8,), batch=2, scale=2.0)[8]
    grid = anchor_grid(8, 4)
    for b, prop in enumerate(merge_proposals(P, (1e-9, 1e6), grid_points=4)):
        assert prop.shape == (1, 64)
        assert torch.allclose(prop[0], P[b, grid].mean(0), atol=1e-6)
    for b, prop in enumerate(merge_proposals(P, (1e6, 1e6), grid_points=4)):
        assert prop.shape == (1, 64)
        assert torch.allclose(prop[0], P[b].mean(0), atol=1e-6)


@pytest.mark.parametrize(
    "seed,taus",
    [
        (0, (0.3, 0.5, 0.8)),
        (1, (0.6, 0.6, 0.6)),
        (2, (0.2, 1.0)),
        (3, (0.4, 0.6, 0.6, 0.9)),
        (4, (0.7,)),
    ],
)
def test_merge_equals_literal_loop(seed, taus):
    P = _block_attention(8, seed=seed, boost=2.0, noise=1.2)[0]
    P = 0.7 * P + 0.3 * _stochastic(1, 64, 64, seed + 100, 1.5)[0]
    expected, margin = _literal_merge(P.double().numpy(), taus, points=4)
    assert margin > 1e-4, "fixture too close to a threshold for a deterministic comparison"
    (got,) = merge_proposals(P[None], taus, grid_points=4)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got.double().numpy(), expected, atol=1e-6)
    if len(taus) > 1:
        assert 1 < got.shape[0] < 16  # the fixture really merges something
    else:
        assert not torch.allclose(got, P[anchor_grid(8, 4)])  # members beyond the anchors


def test_merge_single_iteration_and_validation():
    P = _attention((8,), batch=1)[8]
    assert merge_proposals(P, [0.5], grid_points=4)[0].shape == (16, 64)
    for bad in ((), (0.0,), (1.0, -1.0), (float("nan"),)):
        with pytest.raises(ValueError):
            merge_proposals(P, bad, grid_points=4)
    with pytest.raises(ValueError):
        merge_proposals(P, (1.0,), grid_points=9)


# --------------------------------------------------------------------------------------------
# Labels (items 24-26)
# --------------------------------------------------------------------------------------------


def test_labels_shape_dtype_range():
    props = _random_dists((5, 64), seed=30)
    labels, conf = labels_from_proposals(props, 8, 40)
    assert labels.shape == (40, 40) and labels.dtype == torch.int64
    assert labels.min() >= 0 and labels.max() <= 4
    assert conf.shape == (40, 40) and conf.dtype == torch.float32
    assert (conf > 0).all() and (conf <= 1).all()


def test_labels_match_manual_bilinear_argmax_non_square():
    props = _random_dists((6, 64), seed=31, scale=2.0)
    labels, conf = labels_from_proposals(props, 8, (24, 40))
    assert labels.shape == (24, 40)
    uh, uw = _interp_matrix(8, 24), _interp_matrix(8, 40)
    up = np.einsum("hi,kij,wj->khw", uh, props.double().numpy().reshape(6, 8, 8), uw)
    assert np.array_equal(labels.numpy(), up.argmax(0))
    np.testing.assert_allclose(conf.numpy(), up.max(0) / up.sum(0), rtol=1e-5)


def test_labels_single_proposal_is_all_zero():
    labels, conf = labels_from_proposals(_random_dists((1, 16), seed=32), 4, 32)
    assert torch.equal(labels, torch.zeros(32, 32, dtype=torch.int64))
    assert torch.allclose(conf, torch.ones(32, 32))


def test_labels_ties_go_to_first_proposal():
    a, b = _random_dists((2, 16), seed=33)
    labels, _ = labels_from_proposals(torch.stack([a, a, b]), 4, 16)
    assert not (labels == 1).any()
    assert (labels == 0).any()


def test_labels_from_attention_batched_equals_per_image():
    att = _attention((16, 8, 4), batch=3, scale=3.0)
    kwargs = {"kl_threshold": 0.4, "iterations": 2, "grid_points": 4}
    batched = labels_from_attention(att, 64, **kwargs)
    assert batched.shape == (3, 64, 64) and batched.dtype == torch.int64
    for b in range(3):
        single = labels_from_attention({s: m[b : b + 1] for s, m in att.items()}, 64, **kwargs)
        assert torch.equal(batched[b], single[0])


def test_labels_from_attention_non_square_and_thresholds_override():
    att = _attention((8, 4), batch=2, scale=3.0)
    labels = labels_from_attention(att, (20, 36), grid_points=4, thresholds=[0.3, 1e6])
    assert labels.shape == (2, 20, 36)
    assert torch.equal(labels, torch.zeros_like(labels))  # huge last tau: one proposal
    labels, conf = segment_attention(att, 16, DiffSegOptions(grid_points=4, iterations=1))
    assert labels.shape == conf.shape == (2, 16, 16)


# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------


def test_options_defaults_and_schedule():
    opts = DiffSegOptions()
    assert (opts.kl_threshold, opts.iterations, opts.grid_points, opts.eps) == (1.1, 3, 16, 1e-12)
    assert opts.schedule == (1.1, 1.1, 1.1)
    assert opts.weight_map is None
    custom = DiffSegOptions(weights={8: 0.5, 16: 0.5}, thresholds=[0.9, 1.2])
    assert custom.schedule == (0.9, 1.2)
    assert custom.weight_map == {16: 0.5, 8: 0.5}
    hash(custom)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kl_threshold": 0},
        {"kl_threshold": -1.0},
        {"kl_threshold": float("nan")},
        {"iterations": 0},
        {"iterations": 1.5},
        {"iterations": True},
        {"grid_points": 0},
        {"eps": 0.0},
        {"eps": 2.0},
        {"weights": {8: -1.0}},
        {"weights": {8: 0.0}},
        {"weights": {}},
        {"weights": {0: 1.0}},
        {"thresholds": ()},
        {"thresholds": (1.0, 0.0)},
    ],
    ids=str,
)
def test_options_validation(kwargs):
    with pytest.raises(ValueError):
        DiffSegOptions(**kwargs)


# --------------------------------------------------------------------------------------------
# Synthetic block test (item 27), at the reference sizes 64 -> 512
# --------------------------------------------------------------------------------------------


def test_block_fixture_low_threshold_keeps_every_anchor(block64):
    (prop,) = merge_proposals(block64, (0.5, 0.5, 0.5))
    assert prop.shape == (256, 4096)


def test_block_fixture_recovers_the_quadrants(block64):
    labels = labels_from_attention({64: block64}, 512, kl_threshold=1.1)
    assert labels.shape == (1, 512, 512)
    quads = labels[0].view(2, 256, 2, 256).permute(0, 2, 1, 3).reshape(4, -1)
    firsts = quads[:, 0]
    assert torch.equal(quads, firsts[:, None].expand_as(quads))  # each quadrant uniform
    assert firsts.unique().numel() == 4  # and all four distinct
    assert labels.unique().numel() == 4


def test_block_fixture_high_threshold_gives_one_segment(block64):
    labels = labels_from_attention({64: block64}, 512, kl_threshold=6.0)
    assert torch.equal(labels, torch.zeros_like(labels))


def test_block_fixture_segments_decrease_with_threshold(block64):
    counts = [merge_proposals(block64, (t,) * 3)[0].shape[0] for t in (0.5, 1.1, 2.0, 4.0)]
    assert counts == [256, 4, 4, 1]


def test_chunked_labeling_equals_one_shot_argmax():
    generator = torch.Generator().manual_seed(3)
    proposals = torch.rand(70, 16 * 16, generator=generator)
    proposals[5] = proposals[40]  # an exact tie across chunks: the earlier index must win
    chunked, chunked_confidence = labels_from_proposals(proposals, 16, (50, 70), chunk=8)
    whole, whole_confidence = labels_from_proposals(proposals, 16, (50, 70), chunk=1000)
    up = torch.nn.functional.interpolate(
        proposals.reshape(1, 70, 16, 16), size=(50, 70), mode="bilinear", align_corners=False
    )[0]
    torch.testing.assert_close(chunked, up.argmax(0), rtol=0, atol=0)
    torch.testing.assert_close(whole, up.argmax(0), rtol=0, atol=0)
    torch.testing.assert_close(chunked_confidence, whole_confidence)
    assert not torch.any(chunked == 40)


# --------------------------------------------------------------------------------------------
# The one-pass aggregation and the blocked iteration-0 distances (issue 27) against the
# per-side and elementwise forms
# --------------------------------------------------------------------------------------------


def test_the_coarse_to_fine_aggregation_equals_adding_each_side_in_turn():
    from labeler.methods.diffseg.algorithm import _accumulate_side, _aggregate_chain

    att = _attention((16, 8, 4, 2), batch=2, seed=3)
    weights = {16: 0.4, 8: 0.3, 4: 0.2, 2: 0.1}
    per_side = torch.zeros(2, 256, 256)
    for side, maps in att.items():
        _accumulate_side(per_side, maps, side, 16, weights[side])
    chain = _aggregate_chain(att, weights, 16)
    torch.testing.assert_close(chain, per_side, rtol=1e-6, atol=1e-9)
    # the largest side at weight 0: the coarser sum is replicated over its queries
    coarse = {s: m for s, m in att.items() if s != 16}
    zero_largest = aggregate_attention(att, {8: 0.5, 4: 0.3, 2: 0.2})
    torch.testing.assert_close(zero_largest, _aggregate_chain(coarse, weights | {8: 0.5, 4: 0.3,
                                                              2: 0.2}, 16))
    expected = torch.zeros(2, 256, 256)
    for side, weight in {8: 0.5, 4: 0.3, 2: 0.2}.items():
        _accumulate_side(expected, att[side], side, 16, weight)
    torch.testing.assert_close(zero_largest, expected, rtol=1e-6, atol=1e-9)


def test_sides_that_do_not_divide_each_other_still_aggregate():
    """48 is a multiple of 16 and of 12, but 16 is not of 12: the per-side path runs."""
    att = _attention((12, 16), batch=1, seed=5)
    att[48] = _stochastic(1, 48 * 48, 48 * 48, 7)
    P = aggregate_attention(att)
    torch.testing.assert_close(P.sum(-1), torch.ones(1, 48 * 48))


@pytest.mark.parametrize("rows", [512, 5])
def test_blocked_anchor_distances_equal_the_elementwise_distance(monkeypatch, rows):
    from labeler.methods.diffseg import algorithm

    monkeypatch.setattr(algorithm, "LOG_ROWS", rows)  # one block, or blocks with a remainder
    P = aggregate_attention(_attention((8, 4), batch=2, seed=1, scale=4.0))
    P[0, 3, :7] = 0.0  # exact zeros take the epsilon clamp
    P[0, 3] /= P[0, 3].sum()
    grid = anchor_grid(8, 4)
    anchors = P[:, grid]
    blocked = algorithm._anchor_distances(P, anchors, 1e-12)
    elementwise = symmetric_kl(anchors.unsqueeze(2), P.unsqueeze(1)).clamp(min=0)
    torch.testing.assert_close(blocked, elementwise, rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(blocked, pairwise_symmetric_kl(anchors, P), rtol=1e-5, atol=2e-5)


def test_pairwise_distances_of_a_set_with_itself_take_one_log():
    p = _stochastic(2, 6, 64, 11, scale=3.0)
    same = pairwise_symmetric_kl(p, p)
    expected = symmetric_kl(p.unsqueeze(2), p.unsqueeze(1)).clamp(min=0)
    torch.testing.assert_close(same, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(same, pairwise_symmetric_kl(p, p.clone()))


# --------------------------------------------------------------------------------------------
# Post-processing cost (issue 27 item 6): P written into a reused workspace (bit-identical),
# member means over the distinct member sets (bit-identical on one thread)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("weights", [None, {8: 0.5, 4: 0.3, 2: 0.2}, {16: 1.0}])
def test_aggregation_into_a_reused_workspace_equals_a_fresh_result(weights):
    from labeler.methods.diffseg.algorithm import workspace

    att = _attention((16, 8, 4, 2), batch=3, seed=4)
    buffer = workspace(None, att)
    assert buffer.shape == (3, 256, 256) and buffer.dtype == torch.float32
    buffer.fill_(float("nan"))  # stale content must be overwritten everywhere
    P = aggregate_attention(att, weights, out=buffer[:3])
    assert P.data_ptr() == buffer.data_ptr()
    assert torch.equal(P, aggregate_attention(att, weights))
    # a smaller last batch reuses the buffer; another shape or dtype gets a new one
    last = {s: m[:2] for s, m in att.items()}
    assert workspace(buffer, last) is buffer
    assert torch.equal(aggregate_attention(last, weights, out=buffer[:2]),
                       aggregate_attention(last, weights))
    assert workspace(buffer, {8: att[8]}) is not buffer
    assert workspace(buffer, {s: m.double() for s, m in att.items()}).dtype == torch.float64
    with pytest.raises(ValueError, match="out must be"):
        aggregate_attention(att, weights, out=buffer[:2])


def test_sides_that_do_not_divide_each_other_aggregate_into_a_workspace():
    att = _attention((12, 16), batch=1, seed=5)
    att[48] = _stochastic(1, 48 * 48, 48 * 48, 7)
    out = torch.full((1, 48 * 48, 48 * 48), float("nan"))
    assert torch.equal(aggregate_attention(att, out=out), aggregate_attention(att))


def test_member_means_average_each_distinct_set_once():
    from labeler.methods.diffseg.algorithm import _member_means

    maps = _stochastic(2, 40, 64, 12)
    members = torch.rand(2, 9, 40, generator=_gen(1)) < 0.4
    members[:, :, 0] = True  # no empty set
    members[0, 5] = members[0, 2]  # shared sets within an image
    members[0, 7] = members[0, 2]
    members[1, 3] = members[0, 4]  # and the same set in another image
    weights = members.float() / members.float().sum(-1, keepdim=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # with several threads MKL splits a GEMM by its shape (rounding)
    try:
        means = _member_means(members, maps)
        assert torch.equal(means, torch.stack([weights[b] @ maps[b] for b in range(2)]))
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(_member_means(members, maps), torch.bmm(weights, maps))
    assert torch.equal(means[0, 5], means[0, 2]) and torch.equal(means[0, 7], means[0, 2])
    expected = torch.stack([maps[b][members[b, k]].double().mean(0) for b in range(2)
                            for k in range(9)]).view(2, 9, 64)
    torch.testing.assert_close(means.double(), expected, rtol=1e-6, atol=1e-9)
