"""Attention processors installed once per segmenter: one base, sinks reset per batch, restore."""

from __future__ import annotations

import copy

import pytest
import torch

from labeler.attention.capture import CapturingProcessor, capturing_processors
from labeler.attention.hooks import AttentionHooks
from labeler.attention.layers import select_layers, unet_attention_layers
from labeler.attention.processor import ProjectedAttention, ProjectingProcessor, sdpa_attention
from labeler.methods.diffseg.segmenter import DiffSeg
from labeler.methods.slime.data import prepare
from labeler.methods.slime.fit import FitSettings, SlimeFitter
from labeler.methods.slime.segmenter import Slime
from labeler.methods.slime.settings import SlimeOptions
from tests.helpers import fill_zero_weights, flat_regions_image
from tests.test_slime_model import CLASSES, make_set, small_sample


@pytest.fixture
def counted_unet(tiny_backbone, monkeypatch):
    """The session UNet with its ``set_attn_processor`` calls counted (``unet.installs``)."""
    unet = tiny_backbone.unet
    original_processors = unet.attn_processors
    calls = []
    setter = unet.set_attn_processor
    monkeypatch.setattr(unet, "set_attn_processor", lambda p: (calls.append(1), setter(p))[1],
                        raising=False)
    unet.installs = calls
    yield unet
    monkeypatch.undo()
    del unet.installs
    # whatever a test did, the next one starts from the UNet's own processors
    unet.set_attn_processor(original_processors)


@pytest.fixture(scope="module")
def unet_inputs(tiny_backbone):
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 32, 32, generator=generator)
    return latents, torch.tensor([300, 300]), tiny_backbone.encode_prompts(["", "a photo"])


def run(unet, inputs):
    latents, timesteps, context = inputs
    with torch.no_grad():
        return unet(latents, timesteps, encoder_hidden_states=context).sample


def images(count):
    layouts = ("quadrants", "halves")
    return [flat_regions_image(64 + 16 * i, 80, layouts[i % 2])[0] for i in range(count)]


# ---- installed once, restored on request -------------------------------------------------------


def test_diffseg_installs_once_across_batches_and_restores_the_originals(counted_unet, tiny_backbone):
    before = counted_unet.attn_processors
    diffseg = DiffSeg(tiny_backbone)
    assert len(counted_unet.installs) == 1
    installed = counted_unet.attn_processors
    for batch in images(3):
        diffseg.attention_maps([batch])
    assert len(counted_unet.installs) == 1  # nothing in the per-batch path re-installs
    after_batches = counted_unet.attn_processors
    assert all(after_batches[key] is installed[key] for key in installed)
    assert {key for key, p in installed.items() if isinstance(p, CapturingProcessor)} == {
        layer.key for layer in diffseg.layers
    }
    diffseg.close()
    restored = counted_unet.attn_processors
    assert all(restored[key] is before[key] for key in before)


def test_slime_inference_and_fit_install_once(counted_unet, tiny_backbone):
    before = counted_unet.attn_processors
    options = SlimeOptions(input_size=128, patches_per_side=1, patch_size=400)
    segmenter = Slime(tiny_backbone, make_set(tiny_backbone), options, seed=3)
    installed = counted_unet.attn_processors
    for batch in images(3):
        segmenter.label([batch])
    assert len(counted_unet.installs) == 1
    assert all(counted_unet.attn_processors[key] is installed[key] for key in installed)
    segmenter.close()
    assert all(counted_unet.attn_processors[key] is before[key] for key in before)

    counted_unet.installs.clear()
    fitter = SlimeFitter(tiny_backbone, CLASSES, FitSettings(fit_size=128, mask_size=16, seed=1))
    image, mask = prepare(small_sample(), 128)
    for target in (1, 2):
        terms = fitter.step(*fitter.sample(image, mask, target=target))
        assert terms["sd"] > 0  # the unconditional pass ran, through the paused processors
    assert len(counted_unet.installs) == 1
    fitter.store.reset()
    latents = torch.zeros(1, 4, 16, 16)
    with torch.no_grad(), fitter.store.paused():
        counted_unet(latents, torch.tensor([50]), encoder_hidden_states=fitter.uncond)
    with pytest.raises(RuntimeError, match="0 of 5 class maps"):
        fitter.store.cross_maps(16)  # a paused pass records nothing
    fitter.close()
    assert all(counted_unet.attn_processors[key] is before[key] for key in before)


def test_a_displaced_hook_set_reinstalls_itself_and_restore_finds_the_originals(counted_unet):
    before = counted_unet.attn_processors
    keys = [layer.key for layer in select_layers(unet_attention_layers(counted_unet), "self")]
    first = AttentionHooks(counted_unet, capturing_processors(dict.fromkeys(keys, print)))
    second = AttentionHooks(counted_unet, capturing_processors(dict.fromkeys(keys[:2], print)))
    assert second.installed and not first.installed
    # the layers the second set does not use got the UNet's own processors back, not the first's
    assert counted_unet.attn_processors[keys[2]] is before[keys[2]]
    calls = len(counted_unet.installs)
    second.ensure()
    assert len(counted_unet.installs) == calls  # installed: a no-op
    first.ensure()
    assert first.installed and not second.installed
    second.restore()  # holds nothing now: nothing changes
    assert first.installed
    first.restore()
    assert all(counted_unet.attn_processors[key] is before[key] for key in before)
    with pytest.raises(ValueError, match="no such attention layers"):
        AttentionHooks(counted_unet, {"nope.attn1.processor": first.processors[keys[0]]})


# ---- sinks reset per batch ---------------------------------------------------------------------


def test_diffseg_batches_get_their_own_maps(tiny_backbone):
    first, second = images(2)
    diffseg = DiffSeg(tiny_backbone)
    try:
        maps_first = diffseg.attention_maps([first])
        maps_second = diffseg.attention_maps([second])
    finally:
        diffseg.close()
    assert diffseg.sink.layer_counts() == {}  # read and cleared
    fresh = DiffSeg(tiny_backbone)
    try:
        alone = fresh.attention_maps([second])
    finally:
        fresh.close()
    assert not torch.allclose(maps_first[64], maps_second[64])
    for side, maps in alone.items():
        torch.testing.assert_close(maps_second[side], maps, atol=1e-6, rtol=0)


def test_slime_batches_get_their_own_maps(tiny_backbone):
    first, second = images(2)
    options = SlimeOptions(input_size=128, patches_per_side=1, patch_size=400)

    def pass_of(segmenter, image):
        """(class maps, WAS) of one UNet pass over the image's patches."""
        maps, was, _ = segmenter.patch_maps(segmenter._patches(image), segmenter._generators(image))
        return maps, was

    segmenter = Slime(tiny_backbone, make_set(tiny_backbone), options, seed=3)
    try:
        maps_first, _ = pass_of(segmenter, first)
        maps_second, was_second = pass_of(segmenter, second)
    finally:
        segmenter.close()
    fresh = Slime(tiny_backbone, make_set(tiny_backbone), options, seed=3)
    try:
        maps_alone, was_alone = pass_of(fresh, second)
    finally:
        fresh.close()
    assert not torch.allclose(maps_first, maps_second)
    torch.testing.assert_close(maps_second, maps_alone, atol=1e-6, rtol=0)
    torch.testing.assert_close(was_second, was_alone, atol=1e-6, rtol=0)


# ---- the extension point: a K/V-fusion processor is a small subclass ----------------------------


class BankedSelfAttention(ProjectingProcessor):
    """Stores its K/V in a bank on the first pass; later passes attend to [own K/V ; bank K/V]."""

    def __init__(self, key: str, bank: dict) -> None:
        super().__init__(key)
        self.bank = bank

    def attend(self, attn, projected: ProjectedAttention) -> torch.Tensor:
        if self.key not in self.bank:
            self.bank[self.key] = (projected.key, projected.value)
            return sdpa_attention(attn, projected)
        return sdpa_attention(attn, projected.extended(*self.bank[self.key]))


def test_kv_fusion_subclass_with_its_own_kv_as_the_bank_equals_plain_attention(
    tiny_backbone, unet_inputs
):
    unet = copy.deepcopy(tiny_backbone.unet)
    fill_zero_weights(unet)  # attention must reach the output for the bank to show
    reference = run(unet, unet_inputs)
    keys = [layer.key for layer in select_layers(unet_attention_layers(unet), "self")]
    bank: dict = {}
    hooks = AttentionHooks(unet, {key: BankedSelfAttention(key, bank) for key in keys})
    try:
        support = run(unet, unet_inputs)  # fills the bank with the query's own K/V
        fused = run(unet, unet_inputs)  # softmax over duplicated keys: the same attention
        bank.clear()
        other = (torch.randn_like(unet_inputs[0]), *unet_inputs[1:])
        run(unet, other)  # a bank from other latents
        changed = run(unet, unet_inputs)
    finally:
        hooks.restore()
    assert len(bank) == len(keys) == 16
    torch.testing.assert_close(support, reference, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fused, reference, atol=1e-4, rtol=1e-4)
    # the bank is really attended to: another bank moves the output far beyond float error
    rounding = (fused - reference).abs().max()
    assert (changed - reference).abs().max() > max(20 * rounding, 1e-5)


def test_extending_a_masked_layer_is_refused():
    tensor = torch.zeros(1, 1, 4, 2)
    masked = ProjectedAttention(tensor, tensor, tensor, torch.zeros(1, 1, 4, 4), tensor, None, None)
    with pytest.raises(ValueError, match="masked"):
        masked.extended(tensor, tensor)
    assert masked.query_grid() == (2, 2)
