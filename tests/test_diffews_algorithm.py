"""DiffewS pure parts: OI2M against the reference scheduler math, decoding, decision rules."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from labeler.methods.diffews.algorithm import (
    DecisionRule,
    decided_soft_maps,
    foreground,
    mask_latent_from_output,
    resize_soft_maps,
    resolve_classes,
    soft_maps_from_decoded,
)
from tests.diffews_helpers import official_relative_decision


def reference_scheduler() -> DDIMScheduler:
    """The reference's ``scheduler_1.0_1.0``: every beta 1 (alpha-bar 0), v-prediction."""
    return DDIMScheduler(
        num_train_timesteps=1000, beta_start=1.0, beta_end=1.0, beta_schedule="scaled_linear",
        prediction_type="v_prediction", set_alpha_to_one=False, steps_offset=1, clip_sample=False,
        timestep_spacing="leading",
    )


def test_oi2m_equals_reference_scheduler_step():
    generator = torch.Generator().manual_seed(0)
    scheduler = reference_scheduler()
    scheduler.set_timesteps(1)
    assert scheduler.timesteps.tolist() == [1]
    query_latent = torch.randn(2, 4, 8, 8, generator=generator)
    output = torch.randn(2, 4, 8, 8, generator=generator)
    reference = scheduler.step(output, scheduler.timesteps[0], query_latent).pred_original_sample
    torch.testing.assert_close(mask_latent_from_output(output), reference, rtol=0, atol=1e-6)


def test_soft_maps_clip_map_and_average():
    decoded = torch.tensor([[[[-3.0, 0.0]], [[1.0, 0.0]], [[0.5, 2.0]]]])  # (1, 3, 1, 2)
    soft = soft_maps_from_decoded(decoded)
    assert soft.shape == (1, 1, 2)
    expected = torch.tensor([[[(0.0 + 1.0 + 0.75) / 3, (0.5 + 0.5 + 1.0) / 3]]])
    torch.testing.assert_close(soft, expected)


def test_relative_rule_uses_each_images_own_max():
    soft = torch.zeros(2, 4, 4)
    soft[0, 0, 0], soft[0, 1, 1] = 0.8, 0.3  # 0.3 > 0.25 * 0.8
    soft[1, 0, 0], soft[1, 1, 1] = 0.1, 0.02  # a dim image still gets its brightest region
    masks = foreground(soft, DecisionRule("relative"))
    assert masks[0].sum() == 2 and masks[0, 1, 1]
    assert masks[1].sum() == 1 and masks[1, 0, 0]


def test_absolute_rule_drops_absent_classes():
    soft = torch.full((2, 4, 4), 0.05)
    soft[0, :2] = 0.9  # present
    soft[1, :2] = 0.3  # above the pixel level but its peak is below presence
    masks = foreground(soft, DecisionRule("absolute", level=0.15, presence=0.5))
    assert masks[0].sum() == 8 and not masks[1].any()


def test_overlaps_go_to_the_highest_soft_value():
    soft = torch.zeros(2, 2, 2)
    soft[0] = torch.tensor([[0.9, 0.6], [0.0, 0.0]])
    soft[1] = torch.tensor([[0.7, 0.8], [0.6, 0.0]])
    labels, confidence = resolve_classes(soft, DecisionRule("absolute", level=0.15, presence=0.5))
    assert labels.tolist() == [[0, 1], [1, -1]]
    torch.testing.assert_close(confidence, torch.tensor([[0.9, 0.8], [0.6, 0.0]]))


def test_soft_maps_are_resized_before_thresholding():
    soft = torch.zeros(1, 2, 2)
    soft[0, 0, 0] = 1.0
    resized = resize_soft_maps(soft, (4, 6))
    assert resized.shape == (1, 4, 6)
    assert 0.0 <= float(resized.min()) and float(resized.max()) <= 1.0
    labels, _ = resolve_classes(resized, DecisionRule("absolute", level=0.5, presence=0.5))
    assert (labels[:2, :3] == 0).any() and (labels[2:, 3:] == -1).all()


@pytest.mark.parametrize("bad", [{"kind": "median"}, {"level": 1.5}, {"ratio": -0.1}])
def test_bad_rules_are_refused(bad):
    with pytest.raises(ValueError):
        DecisionRule(**bad)


@pytest.mark.parametrize("seed", range(8))
def test_relative_rule_is_the_reference_decision_pixel_for_pixel(seed):
    generator = torch.Generator().manual_seed(seed)
    decoded = torch.rand(1, 3, 64, 64, generator=generator) * 2.4 - 1.2  # clipping included
    decoded[0, :, 20:40] *= 0.3 * (seed + 1) / 8  # a dimmer band: pixels near the threshold
    rule = DecisionRule("relative")
    soft, peak = decided_soft_maps(decoded, rule)
    assert torch.equal(foreground(soft, rule, peak), official_relative_decision(decoded))


def test_the_reference_truncates_to_uint8_and_peaks_over_channels():
    """Two pixels the float channel mean decides the other way: so the test above has teeth."""
    decoded = torch.full((1, 3, 1, 3), -1.0)
    decoded[0, 0, 0, 0] = 1.0  # peak pixel: red only; channel mean 1/3, 3-channel max 1
    decoded[0, :, 0, 1] = 63.9 / 127.5 - 1.0  # level 63.9: mean 0.2506 > 0.25, truncated 63
    decoded[0, 0, 0, 2] = 0.0  # channel mean 0.5 / 3 = 0.167: above 0.25 x (1/3), below 0.25 x 1
    rule = DecisionRule("relative")
    official = official_relative_decision(decoded)
    assert official[0].tolist() == [[True, False, False]]
    soft, peak = decided_soft_maps(decoded, rule)
    assert torch.equal(foreground(soft, rule, peak), official)
    float_mean = soft_maps_from_decoded(decoded)
    assert foreground(float_mean, rule)[0].tolist() == [[True, True, True]]
