"""SLiMe parity options with the official code: uint8 reference resize, fit antialias, the
reference blur kernel draw, a test timestep range, and the size of the remaining epsilon forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labeler.methods.annotations import AnnotatedImage
from labeler.methods.preprocess import images_to_model_input, resize_image, resize_reference
from labeler.methods.slime.algorithm import (
    accumulate_patches,
    patch_grid,
    patch_timesteps,
    rescale_to_range,
)
from labeler.methods.slime.data import AugmentSettings, augment, blur_kernel_size, prepare
from labeler.methods.slime.fit import FitSettings, fit_embedding_set
from labeler.methods.slime.segmenter import Slime
from labeler.methods.slime.settings import SlimeOptions
from tests.helpers import flat_regions_image
from tests.test_slime_model import CLASSES, make_set


def noise_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def float_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Plain float bilinear (half-pixel centres, no antialias): what cv2 INTER_LINEAR rounds."""
    tensor = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None]
    return F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()


# ---- the reference resize ------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(37, 53, 23, 71), (300, 410, 128, 128), (90, 150, 128, 128)])
def test_reference_resize_is_bilinear_rounded_to_grey_levels(shape):
    height, width, out_h, out_w = shape
    image = noise_image(height, width)
    resized = resize_reference(image, out_h, out_w)
    assert resized.dtype == np.uint8 and resized.shape == (out_h, out_w, 3)
    # Same sampling grid as float bilinear (half-pixel centres, (height, width) not swapped):
    # only the fixed-point weights and the final rounding differ, by at most one grey level.
    difference = np.abs(resized.astype(np.float32) - float_bilinear(image, out_h, out_w))
    assert difference.max() <= 1.0
    assert difference.mean() < 0.3


def test_reference_resize_refuses_float_images():
    with pytest.raises(ValueError, match="uint8"):
        resize_reference(np.zeros((4, 4, 3), np.float32), 8, 8)


def test_model_input_with_the_reference_resize_holds_whole_grey_levels():
    image = noise_image(300, 410, seed=1)
    reference = images_to_model_input([image], 128, resize="reference")
    grey = (reference + 1) * 127.5
    assert torch.allclose(grey, grey.round(), atol=1e-4)
    expected = torch.from_numpy(resize_reference(image, 128, 128)).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.equal(reference[0], expected)
    plain = images_to_model_input([image], 128, antialias=False)
    assert not torch.equal(reference, plain)
    assert float((reference - plain).abs().max()) <= 1 / 127.5 + 1e-6
    with pytest.raises(ValueError, match="resize must be one of"):
        resize_image(image, 128, mode="nearest")


def test_fit_prepare_uses_the_requested_resize():
    image, regions = flat_regions_image(300, 410, "quadrants")
    image = np.clip(image.astype(np.int64) + noise_image(300, 410) // 8, 0, 255).astype(np.uint8)
    sample = AnnotatedImage("q", image, regions, "0" * 16)
    reference, _ = prepare(sample, 128, resize="reference")
    expected = torch.from_numpy(resize_reference(image, 128, 128)).permute(2, 0, 1).float()
    assert torch.equal(reference, expected)
    antialiased, _ = prepare(sample, 128)
    plain, _ = prepare(sample, 128, antialias=False)
    assert torch.equal(plain, torch.from_numpy(float_bilinear(image, 128, 128)).permute(2, 0, 1).clamp(0, 255))
    assert not torch.equal(antialiased, plain)


def test_reference_augmentation_keeps_whole_grey_levels_through_blur_and_crop():
    _, regions = flat_regions_image(80, 80, "quadrants")
    sample = AnnotatedImage("q", noise_image(80, 80, seed=2), regions, "0" * 16)
    settings = AugmentSettings(size=64, mask_size=16, blur_p=1.0, rotate_p=0.0, resize="reference")
    prepared, mask = prepare(sample, 64, resize="reference")
    generator = torch.Generator().manual_seed(3)
    for step in range(4):
        pixels, _ = augment(prepared, mask, settings, generator, target=step % 4)
        grey = (pixels + 1) * 127.5
        assert torch.allclose(grey, grey.round(), atol=1e-4)
    with pytest.raises(ValueError, match="resize"):
        AugmentSettings(resize="cubic")


# ---- blur kernel distribution --------------------------------------------------------------------


def test_blur_kernel_sizes_follow_the_reference_distribution():
    generator = torch.Generator().manual_seed(0)
    draws = np.array([blur_kernel_size(generator) for _ in range(10_000)])
    assert set(np.unique(draws)) == {1, 3, 5}
    for size, probability in ((1, 0.2), (3, 0.4), (5, 0.4)):
        sigma = np.sqrt(10_000 * probability * (1 - probability))
        assert abs(int((draws == size).sum()) - 10_000 * probability) < 3 * sigma


# ---- the test timestep range ---------------------------------------------------------------------


def test_timestep_setting_accepts_an_int_or_a_range():
    assert SlimeOptions().timestep == 100
    assert SlimeOptions.from_mapping({"timestep": [50, 150]}).timestep == (50, 150)
    assert SlimeOptions.from_mapping({"timestep": [80, 80]}).timestep == 80
    assert SlimeOptions(timestep=(50, 150)).to_dict()["timestep"] == [50, 150]
    assert SlimeOptions(timestep=(50, 150)).timestep_range() == (50, 150)
    assert SlimeOptions(timestep=7).timestep_range() == (7, 7)
    for bad in ([150, 50], [1, 2, 3], [0, 1000], 1000, -1, "100", True, [1.5, 3]):
        with pytest.raises(ValueError, match="timestep"):
            SlimeOptions.from_mapping({"timestep": bad})
    with pytest.raises(ValueError, match="resize"):
        SlimeOptions.from_mapping({"resize": "cubic"})


def test_patch_timesteps_draw_one_per_patch_and_nothing_when_fixed():
    generators = [torch.Generator().manual_seed(seed) for seed in range(64)]
    drawn = patch_timesteps((50, 150), generators)
    assert drawn.dtype == torch.long and drawn.shape == (64,)
    assert int(drawn.min()) >= 50 and int(drawn.max()) <= 150 and len(set(drawn.tolist())) > 10
    again = patch_timesteps((50, 150), [torch.Generator().manual_seed(seed) for seed in range(64)])
    assert torch.equal(drawn, again)
    fresh = torch.Generator().manual_seed(0)
    state = fresh.get_state()
    assert torch.equal(patch_timesteps((100, 100), [fresh]), torch.tensor([100]))
    assert torch.equal(fresh.get_state(), state)


def unet_timesteps(backbone):
    """Record the timesteps of every UNet call (a forward pre-hook)."""
    seen: list[torch.Tensor] = []

    def hook(_module, args, kwargs):
        timesteps = args[1] if len(args) > 1 else kwargs["timestep"]
        seen.append(timesteps.detach().cpu().clone())

    return seen, backbone.unet.register_forward_pre_hook(hook, with_kwargs=True)


def test_inference_draws_a_timestep_per_patch_from_the_range(tiny_backbone):
    image, _ = flat_regions_image(64, 64, "quadrants")
    ranged = Slime(tiny_backbone, make_set(tiny_backbone),
                   SlimeOptions(input_size=128, timestep=(20, 900)), seed=3)
    seen, handle = unet_timesteps(tiny_backbone)
    try:
        first = ranged.predict([image])
        second = ranged.predict([image])
    finally:
        handle.remove()
        ranged.close()
    assert len(seen) == 2 and torch.equal(seen[0], seen[1])  # seeded per patch: reproducible
    assert seen[0].shape == (4,) and len(set(seen[0].tolist())) > 1
    assert int(seen[0].min()) >= 20 and int(seen[0].max()) <= 900
    np.testing.assert_array_equal(first[0][0], second[0][0])
    assert ranged.provenance().settings["timestep"] == [20, 900]


# ---- recorded in the set, applied at fit and at inference ----------------------------------------


def fit_sample() -> AnnotatedImage:
    image, regions = flat_regions_image(150, 210, "quadrants")
    image = np.clip(image.astype(np.int64) + noise_image(150, 210, seed=4) // 4, 0, 255).astype(np.uint8)
    return AnnotatedImage("quadrants", image, np.minimum(regions, 2), "0" * 16)


def test_fit_records_and_applies_resize_and_antialias(tiny_backbone):
    common = {"epochs": 1, "fit_size": 128, "mask_size": 16, "seed": 2, "augment": False}
    default = fit_embedding_set(tiny_backbone, [fit_sample()], CLASSES, FitSettings(**common), progress=False)
    parity = fit_embedding_set(tiny_backbone, [fit_sample()], CLASSES,
                               FitSettings(**common, resize="reference", antialias=False), progress=False)
    plain = fit_embedding_set(tiny_backbone, [fit_sample()], CLASSES,
                              FitSettings(**common, antialias=False), progress=False)
    assert default.inference["resize"] == "float" and default.inference["antialias"] is True
    assert parity.inference["resize"] == "reference" and parity.inference["antialias"] is False
    assert parity.fit["settings"]["resize"] == "reference" and parity.fit["settings"]["antialias"] is False
    assert plain.inference["antialias"] is False
    # The fit saw different pixels (same seed, no augmentation): the learned rows differ.
    assert not torch.equal(default.embeddings, parity.embeddings)
    assert not torch.equal(default.embeddings, plain.embeddings)
    assert not torch.equal(parity.embeddings, plain.embeddings)
    with pytest.raises(ValueError, match="resize"):
        FitSettings(resize="cubic")

    # `labeler run` resizes as the fit did, unless the job says otherwise.
    image = fit_sample().image
    inherited = Slime(tiny_backbone, parity, SlimeOptions.from_mapping({**parity.inference, "input_size": 128}))
    inherited.close()
    assert inherited.options.resize == "reference"
    whole = images_to_model_input([image], 128, resize="reference")
    expected = F.interpolate(whole[:, :, :100, :100], size=(128, 128), mode="bilinear", align_corners=False)
    assert torch.equal(inherited._patches(image)[:1], expected)
    overridden = Slime(tiny_backbone, parity, SlimeOptions.from_mapping(
        {**parity.inference, "input_size": 128, "resize": "float", "antialias": True}))
    overridden.close()
    assert not torch.equal(overridden._patches(image), inherited._patches(image))
    assert overridden.provenance().settings["resize"] == "float"


# ---- remaining epsilon forms: measured effect ----------------------------------------------------


def reference_accumulate(patch_maps, keep, boxes, size):
    """The reference's form: a coverage count that starts at 1e-7 everywhere."""
    classes = patch_maps.shape[1]
    total = torch.zeros(classes, size, size)
    count = torch.full((classes, size, size), 1e-7)
    for maps, kept, (top, bottom, left, right) in zip(patch_maps, keep, boxes):
        resized = F.interpolate(maps.float()[None], size=(bottom - top, right - left), mode="bilinear",
                                align_corners=False)[0]
        total[:, top:bottom, left:right] += resized * kept.float()[:, None, None]
        count[:, top:bottom, left:right] += kept.float()[:, None, None]
    return total / count


def test_coverage_divisor_differs_from_the_reference_form_below_1e_6():
    generator = torch.Generator().manual_seed(0)
    boxes = patch_grid(128, 100, 2)
    maps = torch.rand(len(boxes), 3, 16, 16, generator=generator)
    keep = torch.rand(len(boxes), 3, generator=generator) > 0.3
    ours, _ = accumulate_patches(maps, keep, boxes, 128)
    reference = reference_accumulate(maps, keep, boxes, 128)
    assert float((ours - reference).abs().max()) < 1e-6  # measured: 1.2e-7, one float32 ulp


def test_rescale_guard_matches_the_reference_except_for_a_flat_map():
    generator = torch.Generator().manual_seed(1)
    maps = torch.rand(3, 8, 8, generator=generator)
    low, high = torch.tensor([0.1, 0.0, 0.3]), torch.tensor([0.5, 0.0, 0.9])  # class 1: zero range
    ours = rescale_to_range(maps, low, high)
    flat = maps.flatten(1)
    scale = (high - low) / (flat.amax(1) - flat.amin(1))
    scale = torch.where(torch.isnan(scale) | (scale == 0), torch.full_like(scale, 1e-7), scale)
    reference = (maps - flat.amin(1)[:, None, None]) * scale[:, None, None] + low[:, None, None]
    assert torch.equal(ours, reference)
    # A flat WAS map (max == min) under a non-flat class range: the reference's scale is inf and
    # its map NaN; ours lands on the class's low end.
    flat_map = torch.full((1, 4, 4), 0.25)
    assert torch.all(rescale_to_range(flat_map, torch.tensor([0.1]), torch.tensor([0.6])) == 0.1)
