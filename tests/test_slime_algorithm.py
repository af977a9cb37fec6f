"""SLiMe invariants that need no model (docs/slime.md, "Tests and benchmark"), on random tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labeler.methods.slime.algorithm import (
    accumulate_patches,
    class_probabilities,
    gate_classes,
    inference_class_values,
    iou,
    mean_iou_present,
    patch_grid,
    postprocess_patch,
    rescale_to_range,
    threshold_row,
    weighted_attention_sum,
)
from labeler.methods.slime.capture import explicit_was, fused_was
from labeler.methods.slime.fit import ce_loss, class_weights, sd_loss, was_mse_loss
from labeler.methods.slime.settings import SlimeOptions


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def random_attention(batch=2, heads=3, side=16, dim=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    query = torch.randn(batch, heads, side * side, dim, generator=generator) * 2
    key = torch.randn(batch, heads, side * side, dim, generator=generator) * 2
    return query, key, dim**-0.5


def head_mean_probabilities(query, key, scale):
    """(B, N, N) head-averaged row-stochastic attention (the reference's P, query-major)."""
    return (query @ key.transpose(-1, -2) * scale).softmax(dim=-1).mean(dim=1)


# ---- 1-3: P, r and WAS ------------------------------------------------------------------------


def test_self_attention_aggregate_is_row_stochastic_after_means_and_resize():
    layers = [head_mean_probabilities(*random_attention(seed=s)) for s in range(3)]
    P = torch.stack(layers).mean(dim=0)  # (B, N, N)
    assert torch.all(P >= 0)
    torch.testing.assert_close(P.sum(dim=-1), torch.ones(2, 256), atol=1e-5, rtol=0)
    # key-major as the reference stores it, query grid resized bilinearly: still sums to 1
    key_major = P.transpose(1, 2).reshape(2, 256, 16, 16)
    resized = F.interpolate(key_major, size=(24, 24), mode="bilinear", align_corners=False)
    torch.testing.assert_close(resized.sum(dim=1), torch.ones(2, 24, 24), atol=1e-5, rtol=0)


def test_training_class_probabilities_are_a_distribution():
    logits = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0)) * 2
    r = class_probabilities(logits)
    assert r.shape == (2, 4, 16, 16)
    assert torch.all((r > 0) & (r < 1))
    torch.testing.assert_close(r.sum(dim=1), torch.ones(2, 16, 16))


def test_fused_was_equals_explicit_product():
    query, key, scale = random_attention()
    r = class_probabilities(torch.randn(2, 5, 16, 16, generator=torch.Generator().manual_seed(1)) * 3)
    values = r.flatten(2).transpose(1, 2)  # (B, N, K)
    fused = fused_was(query, key, values, scale).mean(dim=1)
    explicit = explicit_was(query, key, values, scale).mean(dim=1)
    product = weighted_attention_sum(head_mean_probabilities(query, key, scale), r)
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused.transpose(1, 2).reshape(2, 5, 16, 16), product, atol=1e-5, rtol=1e-5)


def test_fused_was_handles_more_classes_than_the_head_dimension():
    query, key, scale = random_attention(dim=4)
    values = torch.rand(2, 256, 11)
    torch.testing.assert_close(fused_was(query, key, values, scale), explicit_was(query, key, values, scale),
                               atol=1e-5, rtol=1e-5)


def test_was_range_sums_and_bounds():
    P = head_mean_probabilities(*random_attention())
    r = class_probabilities(torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(2)) * 4)
    was = weighted_attention_sum(P, r)
    assert torch.all((was >= 0) & (was <= 1))
    torch.testing.assert_close(was.sum(dim=1), torch.ones(2, 16, 16))
    low = r.flatten(2).amin(dim=2)[..., None, None]
    high = r.flatten(2).amax(dim=2)[..., None, None]
    assert torch.all(was >= low - 1e-6) and torch.all(was <= high + 1e-6)


def test_was_special_cases():
    r = class_probabilities(torch.randn(1, 3, 8, 8))
    identity = torch.eye(64)[None]
    torch.testing.assert_close(weighted_attention_sum(identity, r), r)
    uniform = torch.full((1, 64, 64), 1 / 64)
    expected = r.mean(dim=(2, 3), keepdim=True).expand_as(r)
    torch.testing.assert_close(weighted_attention_sum(uniform, r), expected)
    constant = torch.full((1, 3, 8, 8), 0.25)
    P = head_mean_probabilities(*random_attention(batch=1, side=8))
    torch.testing.assert_close(weighted_attention_sum(P, constant), constant)


# ---- 4-8: inference ---------------------------------------------------------------------------


def inference_maps(batch=2, classes=4, side=16, seed=0):
    """Head/layer means of the K columns of a 77-token softmax: values in [0, 1], sum <= 1."""
    generator = torch.Generator().manual_seed(seed)
    layers = [(torch.randn(batch, side * side, 77, generator=generator) * 3).softmax(-1)[..., :classes]
              for _ in range(3)]
    return torch.stack(layers).mean(0).transpose(1, 2).reshape(batch, classes, side, side)


def test_inference_cross_maps_bounds():
    maps = inference_maps()
    assert torch.all((maps >= 0) & (maps <= 1))
    assert torch.all(maps.sum(dim=1) <= 1 + 1e-6)


def test_rescale_maps_onto_the_cross_attention_range():
    maps = torch.rand(3, 20, 20)
    low, high = torch.tensor([0.1, 0.0, 0.3]), torch.tensor([0.9, 0.2, 0.31])
    out = rescale_to_range(maps, low, high)
    torch.testing.assert_close(out.flatten(1).amin(1), low)
    torch.testing.assert_close(out.flatten(1).amax(1), high)
    flat = rescale_to_range(torch.full((1, 4, 4), 0.5), torch.tensor([0.2]), torch.tensor([0.6]))
    torch.testing.assert_close(flat, torch.full((1, 4, 4), 0.2))  # zero-range map: scale 1e-7


def test_background_threshold_zeroes_at_or_below_the_mean():
    maps = inference_maps(batch=1)
    keep = gate_classes(maps, None)
    values = inference_class_values(maps, keep)
    background, original = values[0, 0], maps[0, 0]
    below = original <= original.mean()
    assert torch.all(background[below] == 0)
    assert torch.equal(background[~below], original[~below])
    assert background.mean() <= original.mean()
    assert torch.equal(values[:, 1:], maps[:, 1:])  # parts untouched
    assert torch.equal(threshold_row(original), background)


def test_gate_and_which_row_is_thresholded():
    maps = torch.zeros(1, 3, 4, 4)
    maps[0, 0] = 0.1  # background fails a 0.2 gate
    maps[0, 1, :2] = 0.5
    maps[0, 2] = torch.linspace(0, 0.9, 16).reshape(4, 4)
    keep = gate_classes(maps, 0.2)
    assert keep.tolist() == [[False, True, True]]
    default = inference_class_values(maps, keep)
    assert torch.equal(default, maps)  # only the background row is ever thresholded
    reference = inference_class_values(maps, keep, threshold_first_kept=True)
    assert torch.equal(reference[0, 1], threshold_row(maps[0, 1]))  # the reference's first kept row


def test_patch_grid_reference_geometry():
    boxes = patch_grid(512, 400, 2)
    assert {(top, left) for top, _, left, _ in boxes} == {(0, 0), (0, 112), (112, 0), (112, 112)}
    assert {(bottom, right) for _, bottom, _, right in boxes} == {(400, 400), (400, 512), (512, 400), (512, 512)}
    assert patch_grid(512, 512, 1) == [(0, 512, 0, 512)]
    # a stride that does not divide: the reference stops short; cover_edges reaches the border
    assert max(b for _, b, _, _ in patch_grid(512, 300, 4, cover_edges=False)) == 510
    assert max(b for _, b, _, _ in patch_grid(512, 300, 4)) == 512
    with pytest.raises(ValueError):
        patch_grid(512, 600, 2)


def test_patch_coverage_counts():
    boxes = patch_grid(512, 400, 2)
    maps = torch.rand(4, 2, 64, 64)
    _, count = accumulate_patches(maps, torch.ones(4, 2, dtype=torch.bool), boxes, 512)
    count = count[0]
    assert set(count.unique().tolist()) == {1.0, 2.0, 4.0}
    assert count[0, 0] == 1 and count[511, 511] == 1 and count[0, 300] == 2
    assert torch.all(count[112:400, 112:400] == 4) and int((count == 4).sum()) == 288 * 288
    gated = torch.ones(4, 2, dtype=torch.bool)
    gated[0, 1] = False
    _, count = accumulate_patches(maps, gated, boxes, 512)
    assert set(count[1].unique().tolist()) <= {0.0, 1.0, 2.0, 3.0, 4.0} and count[1].min() == 0


def test_uncovered_or_all_gated_pixels_become_background():
    boxes = patch_grid(64, 64, 1)
    canvas, _ = accumulate_patches(torch.rand(1, 3, 8, 8), torch.zeros(1, 3, dtype=torch.bool), boxes, 64)
    assert torch.all(canvas == 0) and torch.all(canvas.argmax(0) == 0)


def test_postprocess_patch_upsamples_and_rescales():
    maps = inference_maps(batch=1, classes=3)[0]
    was = torch.rand(3, 16, 16)
    out = postprocess_patch(maps, was, torch.ones(3, dtype=torch.bool), True, 40)
    assert out.shape == (3, 40, 40)
    torch.testing.assert_close(out.flatten(1).amax(1), maps.flatten(1).amax(1))
    torch.testing.assert_close(out.flatten(1).amin(1), maps.flatten(1).amin(1))


def test_paper_mode_expands_to_the_papers_inference():
    options = SlimeOptions(paper_mode=True).effective()
    assert (options.patches_per_side, options.patch_threshold, options.background_threshold,
            options.rescale, options.normalization) == (1, None, False, False, "classes")


def test_options_reject_unknown_keys_with_their_names():
    with pytest.raises(ValueError, match="unknown \\[slime\\] settings: bogus"):
        SlimeOptions.from_mapping({"bogus": 1, "timestep": 100})
    with pytest.raises(ValueError, match="normalization"):
        SlimeOptions.from_mapping({"normalization": "softmax"})


# ---- 9-10: losses -----------------------------------------------------------------------------


def test_ce_class_weights():
    mask = torch.zeros(32, 32, dtype=torch.long)
    mask[:4, :4] = 1  # 16 px
    mask[10:20, 10:20] = 3  # 100 px; class 2 absent
    weights = class_weights(mask, 4)
    counts = torch.bincount(mask.flatten(), minlength=4).float()
    assert weights[0] == 1 and weights[2] == 0
    foreground = counts[1:].sum()
    torch.testing.assert_close((weights[1:] * counts[1:]).sum(), 2 * foreground)


def test_loss_ranges():
    mask = torch.randint(0, 3, (1, 16, 16))
    one_hot = F.one_hot(mask, 3).permute(0, 3, 1, 2).float()
    assert was_mse_loss(one_hot, mask) == 0
    worst = torch.roll(one_hot, 1, dims=1)
    torch.testing.assert_close(was_mse_loss(worst, mask), torch.tensor(2.0))
    random_was = class_probabilities(torch.randn(1, 3, 16, 16))
    assert 0 <= was_mse_loss(random_was, mask) <= 2
    assert ce_loss(torch.randn(1, 3, 16, 16), mask) >= 0
    noise = torch.randn(1, 4, 8, 8)
    assert sd_loss(noise, noise, noise, 100.0) == 0  # u + g (c - u) = eps


# ---- 15: IoU ----------------------------------------------------------------------------------


def test_iou_properties():
    rng = np.random.default_rng(0)
    a, b = rng.random((20, 20)) > 0.5, rng.random((20, 20)) > 0.5
    assert abs(iou(a, a) - 1) < 1e-7
    assert iou(a, ~a) == 0
    assert iou(a, b) == iou(b, a)
    labels = rng.integers(0, 3, (20, 20))
    assert abs(mean_iou_present(labels, labels, 3) - 1) < 1e-7
