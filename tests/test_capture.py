"""Attention capture: which layers, what is captured, and that nothing else changes."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from labeler.attention.capture import CapturingProcessor, ResolutionMeanSink, capture_attention
from labeler.attention.layers import select_layers, unet_attention_layers
from labeler.attention.processor import attention_with_probabilities


@pytest.fixture(scope="module")
def unet_inputs(tiny_backbone):
    torch.manual_seed(0)
    latents = torch.randn(2, 4, 64, 64)
    timesteps = torch.tensor([300, 300])
    context = tiny_backbone.encode_prompts(["", "a photo"])
    return latents, timesteps, context


def test_layers_are_named_by_role_and_resolution(tiny_backbone):
    layers = unet_attention_layers(tiny_backbone.unet)
    self_layers = select_layers(layers, "self")
    per_side = {side: sum(layer.side == side for layer in self_layers) for side in (64, 32, 16, 8)}
    assert per_side == {64: 5, 32: 5, 16: 5, 8: 1}  # the SD 1.x layout DiffSeg averages over
    assert len(select_layers(layers, "cross")) == 16
    up_cross = select_layers(layers, "cross", sides=(16, 32), blocks=("up",))
    assert [layer.block_index for layer in up_cross] == [1, 1, 1, 2, 2, 2]
    assert all(layer.key.endswith("attn2.processor") for layer in up_cross)


def test_captured_pass_equals_default_pass_and_processors_are_restored(tiny_backbone, unet_inputs):
    unet = tiny_backbone.unet
    before = unet.attn_processors
    assert all(isinstance(p, AttnProcessor2_0) for p in before.values())
    with torch.no_grad():
        reference = unet(*unet_inputs[:2], encoder_hidden_states=unet_inputs[2]).sample
        layers = unet_attention_layers(unet)
        shapes = []
        with capture_attention(
            unet, {layer.key: lambda key, p: shapes.append(p.shape) for layer in layers}
        ):
            installed = unet.attn_processors
            captured = unet(*unet_inputs[:2], encoder_hidden_states=unet_inputs[2]).sample
    assert sum(isinstance(p, CapturingProcessor) for p in installed.values()) == len(layers)
    assert len(shapes) == len(layers) == 32
    torch.testing.assert_close(captured, reference, atol=1e-4, rtol=1e-4)
    after = unet.attn_processors
    assert all(after[key] is before[key] for key in before)


def test_only_requested_layers_capture_and_maps_are_row_stochastic(tiny_backbone, unet_inputs):
    unet = tiny_backbone.unet
    layers = select_layers(unet_attention_layers(unet), "self")
    sink = ResolutionMeanSink()
    with torch.no_grad(), capture_attention(unet, {layer.key: sink for layer in layers}):
        installed = unet.attn_processors
        unet(*unet_inputs[:2], encoder_hidden_states=unet_inputs[2])
    capturing = {key for key, p in installed.items() if isinstance(p, CapturingProcessor)}
    assert capturing == {layer.key for layer in layers}
    assert all(isinstance(installed[k], AttnProcessor2_0) for k in set(installed) - capturing)
    assert sink.layer_counts() == {64: 5, 32: 5, 16: 5, 8: 1}
    maps = sink.means()
    for side, probabilities in maps.items():
        assert probabilities.shape == (2, side * side, side * side)
        assert probabilities.dtype == torch.float32
        assert probabilities.min() >= 0
        torch.testing.assert_close(
            probabilities.sum(-1), torch.ones(2, side * side), atol=1e-5, rtol=0
        )
    # the two batch items had different prompts: their maps must differ
    assert not torch.allclose(maps[64][0], maps[64][1])


def test_cross_attention_capture_has_one_column_per_token(tiny_backbone, unet_inputs):
    unet = tiny_backbone.unet
    layer = select_layers(unet_attention_layers(unet), "cross", sides=(16,), blocks=("up",))[0]
    captured = []
    with torch.no_grad(), capture_attention(unet, {layer.key: lambda key, p: captured.append(p)}):
        unet(*unet_inputs[:2], encoder_hidden_states=unet_inputs[2])
    assert len(captured) == 1 and captured[0].shape == (2, 256, 77)


def test_head_chunked_attention_matches_sdpa():
    torch.manual_seed(1)
    query, key, value = (torch.randn(2, 5, 40, 8) for _ in range(3))
    output, head_mean = attention_with_probabilities(query, key, value, scale=8**-0.5, head_chunk=2)
    expected = torch.nn.functional.scaled_dot_product_attention(query, key, value)
    torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-5)
    explicit = (query @ key.transpose(-1, -2) * 8**-0.5).softmax(-1).mean(1)
    torch.testing.assert_close(head_mean, explicit, atol=1e-6, rtol=1e-5)


def test_unknown_layer_is_refused(tiny_backbone):
    with pytest.raises(ValueError, match="no such attention layers"), capture_attention(
        tiny_backbone.unet, {"nope.attn1.processor": print}
    ):
        pass


def test_a_row_selection_captures_only_those_rows_and_keeps_every_output():
    from diffusers.models.attention_processor import Attention

    from labeler.attention.capture import RowSelection

    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=2, dim_head=8, cross_attention_dim=12).eval()
    hidden, context = torch.randn(3, 10, 16), torch.randn(3, 5, 12)
    with torch.no_grad():
        reference = AttnProcessor2_0()(attn, hidden, context)
        everything, selected = [], []
        CapturingProcessor("k", lambda key, p: everything.append(p))(attn, hidden, context)
        selection = RowSelection(slice(1, 2))
        output = CapturingProcessor("k", lambda key, p: selected.append(p), selection=selection)(
            attn, hidden, context)
    torch.testing.assert_close(output, reference, atol=1e-5, rtol=1e-5)
    assert selected[0].shape == (1, 10, 5)
    torch.testing.assert_close(selected[0], everything[0][1:2])
