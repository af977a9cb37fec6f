"""DiffewS on the tiny model: dual input conv, checkpoints, KV fusion and support banks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from labeler.methods.annotations import AnnotatedImage
from labeler.methods.diffews.algorithm import decode_mask_images
from labeler.methods.diffews.attention import SupportBank, install_kv_fusion, self_attention_keys
from labeler.methods.diffews.model import (
    DualInputConv,
    NotADiffewsModel,
    duplicate_and_halve,
    import_checkpoint,
    load_diffews_backbone,
    read_support_conv,
    save_diffews_unet,
)
from labeler.methods.diffews.support import (
    class_supports,
    empty_context,
    record_bank,
    support_latents,
)
from labeler.models.backbone import load_backbone
from labeler.models.tiny.model import tiny_model_dir
from tests.diffews_helpers import official_relative_decision, tiny_checkpoint
from tests.helpers import flat_regions_image

SIZE = 256  # any multiple of 64 runs; smaller than the native 512 to keep the suite fast
TOLERANCE = {"rtol": 1e-3, "atol": 1e-4}  # batched vs one-row kernels differ by ~1e-5


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, labeler_cache) -> str:
    """A tiny DiffewS checkpoint: the tiny model with a perturbed support conv."""
    return str(tiny_checkpoint(tmp_path_factory.mktemp("diffews") / "ckpt"))


@pytest.fixture(scope="module")
def model(checkpoint):
    backbone, digest = load_diffews_backbone(checkpoint)
    fusion = install_kv_fusion(backbone.unet)
    return backbone, digest, fusion


def _annotated(name: str, layout: str, seed: int) -> AnnotatedImage:
    image, regions = flat_regions_image(128, 128, layout)
    noise = np.random.default_rng(seed).integers(-20, 20, image.shape)
    image = np.clip(image.astype(int) + noise, 0, 255).astype(np.uint8)
    return AnnotatedImage(name, image, regions.clip(0, 2), f"{seed:016x}")


def test_duplicate_and_halve_on_doubled_latent_equals_query_conv():
    conv_in = torch.nn.Conv2d(4, 16, 3, padding=1)
    dual = DualInputConv(conv_in, duplicate_and_halve(conv_in))
    latent = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(dual(torch.cat([latent, latent], dim=1)), dual(latent), **TOLERANCE)
    with pytest.raises(ValueError, match="4 .* or 8"):
        dual(torch.randn(1, 5, 8, 8))


def test_checkpoint_round_trip_restores_support_conv_exactly(tmp_path, checkpoint):
    weight, bias = read_support_conv(f"{checkpoint}/unet")
    backbone, _ = load_diffews_backbone(checkpoint)
    assert torch.equal(backbone.unet.conv_in.support.weight, weight)
    assert torch.equal(backbone.unet.conv_in.support.bias, bias)
    # the official release layout: a base folder plus a fine-tuned unet folder
    imported = import_checkpoint(str(tiny_model_dir()), f"{checkpoint}/unet", tmp_path / "imported")
    restored, _ = load_diffews_backbone(str(imported))
    assert torch.equal(restored.unet.conv_in.support.weight, weight)
    assert torch.equal(restored.unet.conv_in.support.bias, bias)
    for name, tensor in backbone.unet.conv_in.query.state_dict().items():
        assert torch.equal(restored.unet.conv_in.query.state_dict()[name], tensor)


def test_base_model_without_support_conv_is_refused(tmp_path):
    with pytest.raises(NotADiffewsModel, match="conv_in_ref"):
        load_diffews_backbone("tiny")
    backbone = load_backbone("tiny")
    with pytest.raises(NotADiffewsModel):
        save_diffews_unet(backbone.unet, tmp_path / "unet")


def test_kv_fusion_only_on_the_16_self_attention_layers(model):
    backbone, _, fusion = model
    keys = self_attention_keys(backbone.unet)
    assert len(keys) == 16 and all(key.endswith("attn1.processor") for key in keys)
    processors = backbone.unet.attn_processors
    cross = [key for key in processors if key.endswith("attn2.processor")]
    assert cross and all(isinstance(processors[key], AttnProcessor2_0) for key in cross)
    supports = class_supports([_annotated("a", "quadrants", 0)], ("background", "a", "b"))
    context = empty_context(backbone)
    latents = support_latents(backbone, supports[0].images, supports[0].masks, SIZE)
    bank = record_bank(backbone.unet, fusion, latents, context, shots=1)
    assert sorted(bank.keys) == sorted(keys)
    fusion.read(bank)
    query = backbone.encode_images(torch.zeros(1, 3, SIZE, SIZE))
    with torch.no_grad():
        backbone.unet(query, torch.tensor([1]), encoder_hidden_states=context)
    assert sorted(fusion.reads) == sorted(keys)
    fusion.off()


def _query_output(backbone, fusion, bank, latents, context):
    fusion.read(bank)
    with torch.no_grad():
        timesteps = torch.ones(len(latents), dtype=torch.long)
        output = backbone.unet(latents, timesteps, encoder_hidden_states=context.expand(len(latents), -1, -1))
    fusion.off()
    return output.sample


def test_bank_changes_the_query_and_cached_bank_equals_recomputed(model, tmp_path):
    backbone, _, fusion = model
    context = empty_context(backbone)
    samples = [_annotated("a", "quadrants", 0), _annotated("b", "halves", 1)]
    supports = class_supports(samples, ("background", "a", "b"))
    latents = support_latents(backbone, supports[0].images[:1], supports[0].masks[:1], SIZE)
    bank = record_bank(backbone.unet, fusion, latents, context, shots=1)
    bank.save(tmp_path / "bank.safetensors")
    cached = SupportBank.load(tmp_path / "bank.safetensors")
    query = backbone.encode_images(torch.rand(1, 3, SIZE, SIZE) * 2 - 1)
    recomputed = record_bank(backbone.unet, fusion, latents, context, shots=1)
    with_cached = _query_output(backbone, fusion, cached, query, context)
    torch.testing.assert_close(with_cached, _query_output(backbone, fusion, recomputed, query, context), **TOLERANCE)
    other = record_bank(backbone.unet, fusion, support_latents(
        backbone, supports[1].images[:1], supports[1].masks[:1], SIZE), context, shots=1)
    assert (with_cached - _query_output(backbone, fusion, other, query, context)).abs().max() > 1e-4


def test_n_shot_bank_is_the_concatenation_of_one_shot_banks(model):
    backbone, _, fusion = model
    context = empty_context(backbone)
    samples = [_annotated(str(i), layout, i) for i, layout in enumerate(["quadrants", "halves", "quadrants"])]
    support = class_supports(samples, ("background", "a"))[0]
    latents = support_latents(backbone, support.images, support.masks, SIZE)
    batched = record_bank(backbone.unet, fusion, latents, context, shots=3)
    per_shot = [record_bank(backbone.unet, fusion, latents[i : i + 1], context, shots=1) for i in range(3)]
    concatenated = SupportBank.concat_shots(per_shot)
    for key in batched.keys:
        assert batched.keys[key].shape[2] == 3 * per_shot[0].keys[key].shape[2]
        torch.testing.assert_close(batched.keys[key], concatenated.keys[key], **TOLERANCE)
        torch.testing.assert_close(batched.values[key], concatenated.values[key], **TOLERANCE)
    query = backbone.encode_images(torch.rand(1, 3, SIZE, SIZE) * 2 - 1)
    torch.testing.assert_close(_query_output(backbone, fusion, batched, query, context),
                               _query_output(backbone, fusion, concatenated, query, context), **TOLERANCE)


def test_a_batch_of_queries_equals_each_query_alone(model):
    backbone, _, fusion = model
    context = empty_context(backbone)
    support = class_supports([_annotated("a", "quadrants", 0), _annotated("b", "halves", 1)],
                             ("background", "a"))[0]
    bank = record_bank(backbone.unet, fusion, support_latents(backbone, support.images, support.masks, SIZE),
                       context, shots=2)
    queries = backbone.encode_images(torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3)) * 2 - 1)
    together = _query_output(backbone, fusion, bank, queries, context)
    for index in range(3):
        alone = _query_output(backbone, fusion, bank, queries[index : index + 1], context)
        torch.testing.assert_close(together[index : index + 1], alone, **TOLERANCE)



def test_default_rule_gives_an_absent_class_no_annotation(model, monkeypatch, tmp_path):
    """Through ``DiffewS.label`` (resize to the original size, rule, overlaps, COCO ids), with
    controlled soft maps: the tiny model's decoder saturates, so its own maps cannot show absence."""
    from labeler.methods.diffews.segmenter import DiffewS
    from labeler.methods.diffews.settings import DiffewsOptions

    monkeypatch.setenv("LABELER_CACHE", str(tmp_path))
    backbone, digest, _ = model
    segmenter = DiffewS(backbone, digest, [_annotated("a", "quadrants", 0)], ("background", "a", "b"),
                        DiffewsOptions(input_size=SIZE))
    assert list((tmp_path / "diffews-banks").glob("*.safetensors"))  # banks cached on first use
    soft = torch.full((1, 2, SIZE, SIZE), 0.05)
    soft[0, 1, : SIZE // 2] = 0.9  # class b present in the top half
    soft[0, 0, SIZE // 2 :] = 0.35  # class a: above the pixel level, but its peak is too low
    monkeypatch.setattr(segmenter, "soft_maps_and_peaks", lambda images: (soft, soft.amax(dim=(-2, -1))))
    labels = segmenter.label([np.zeros((60, 90, 3), np.uint8)])[0]
    assert labels.category_ids.tolist() == [2]
    assert labels.label_map.shape == (60, 90)
    assert (labels.label_map[:30] == 0).all() and (labels.label_map[30:] == -1).all()


def test_relative_rule_labels_what_the_reference_decides(model, monkeypatch, tmp_path):
    """Through ``DiffewS.label`` on the tiny checkpoint: at the model size the label map's
    foreground is the reference's decision on the decoded mask image, pixel for pixel (the decoded
    image darkened by a ramp, since the tiny decoder saturates)."""
    from labeler.methods.diffews import segmenter as segmenter_module
    from labeler.methods.diffews.segmenter import DiffewS
    from labeler.methods.diffews.settings import DiffewsOptions

    monkeypatch.setenv("LABELER_CACHE", str(tmp_path))
    backbone, digest, _ = model
    decoded = []

    def recorded(vae, latents):  # the tiny decoder saturates: a ramp puts pixels on both sides
        image = decode_mask_images(vae, latents)
        decoded.append(image - torch.linspace(0.0, 2.2, image.shape[-1]))
        return decoded[-1]

    monkeypatch.setattr(segmenter_module, "decode_mask_images", recorded)
    segmenter = DiffewS(backbone, digest, [_annotated("a", "halves", 0)], ("background", "a"),
                        DiffewsOptions(input_size=SIZE, rule="relative", cache_banks=False))
    query, _ = flat_regions_image(SIZE, SIZE, "quadrants")
    labels = segmenter.label([query])[0]
    expected = official_relative_decision(decoded[-1].cpu())[0].numpy()
    assert expected.any() and not expected.all()
    np.testing.assert_array_equal(labels.label_map >= 0, expected)


def test_training_context_pads_with_the_references_exclamation_mark(labeler_cache):
    """The reference's 77 training ids are [BOS, EOS] and 75 x "!" (id 0), whatever the
    tokenizer's own pad token (tiny's, like SD 1.x's, is EOS)."""
    backbone = load_backbone("tiny")
    tokenizer = backbone.tokenizer
    assert tokenizer.pad_token == "<|endoftext|>"
    ids = torch.tensor([[tokenizer.bos_token_id, tokenizer.eos_token_id] + [tokenizer.convert_tokens_to_ids("!")] * 75])
    assert ids[0, 2] == 0
    with torch.no_grad():
        expected = backbone.text_encoder(ids)[0]
    torch.testing.assert_close(empty_context(backbone, 77), expected.to(backbone.dtype))
    torch.testing.assert_close(empty_context(backbone, 2), expected[:, :2].to(backbone.dtype))


def test_loading_a_checkpoint_prints_no_warning_about_the_support_conv(checkpoint, capfd):
    load_diffews_backbone(checkpoint)  # stock diffusers skips conv_in_ref; labeler loads it
    captured = capfd.readouterr()
    assert "conv_in_ref" not in captured.err + captured.out
    assert "in_channels_ref" not in captured.err + captured.out
