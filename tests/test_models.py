"""Loading: the tiny model, directories, remote directories, and clear errors."""

from __future__ import annotations

import json
import shutil

import fsspec
import pytest
import torch

from labeler.models.backbone import ModelLoadError, default_dtype, load_backbone
from labeler.models.tiny.model import tiny_model_dir


def test_tiny_model_is_identical_when_rebuilt(tmp_path, tiny_backbone):
    rebuilt = load_backbone(str(tiny_model_dir(tmp_path)), device="cpu")
    for name in ("unet", "vae", "text_encoder"):
        ours = getattr(tiny_backbone, name).state_dict()
        theirs = getattr(rebuilt, name).state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[key], theirs[key]) for key in ours)
    assert rebuilt.fingerprint == tiny_backbone.fingerprint


def test_tiny_model_has_sd_geometry(tiny_backbone):
    assert tiny_backbone.image_size == 512 and tiny_backbone.vae_scale == 8
    assert tiny_backbone.dtype == torch.float32 and tiny_backbone.device.type == "cpu"
    latents = tiny_backbone.encode_images(torch.zeros(1, 3, 512, 512))
    assert latents.shape == (1, 4, 64, 64)
    assert tiny_backbone.encode_prompts(["", "car"]).shape == (2, 77, 32)
    empty = tiny_backbone.tokenizer("", padding="max_length", max_length=77).input_ids
    assert empty[0] == tiny_backbone.tokenizer.bos_token_id and set(empty[1:]) == {
        tiny_backbone.tokenizer.eos_token_id
    }


def test_posterior_mean_is_deterministic_and_sample_is_not(tiny_backbone):
    pixels = torch.rand(1, 3, 512, 512) * 2 - 1
    assert torch.equal(tiny_backbone.encode_images(pixels), tiny_backbone.encode_images(pixels))
    generator = torch.Generator().manual_seed(0)
    sample = tiny_backbone.encode_images(pixels, generator=generator, sample=True)
    assert not torch.equal(sample, tiny_backbone.encode_images(pixels))


def test_loads_a_diffusers_directory_from_object_storage(labeler_cache):
    source = tiny_model_dir()
    fs = fsspec.filesystem("memory")
    for path in source.rglob("*"):
        if path.is_file():
            fs.pipe_file(f"/models/tiny/{path.relative_to(source)}", path.read_bytes())
    backbone = load_backbone("memory://models/tiny", device="cpu")
    assert backbone.unet.config.sample_size == 64


def test_missing_and_broken_models_fail_clearly(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_backbone(str(tmp_path / "nothing-here"))
    with pytest.raises(ModelLoadError, match="no unet/ folder"):
        load_backbone(str(tmp_path))
    with pytest.raises(ModelLoadError, match="could not load the unet"):
        load_backbone("someone/no-such-model-offline")


def test_mismatched_components_are_refused(tmp_path):
    broken = tmp_path / "mismatched"
    shutil.copytree(tiny_model_dir(), broken)
    config_path = broken / "text_encoder" / "config.json"
    config = json.loads(config_path.read_text())
    config["hidden_size"] = 48
    config_path.write_text(json.dumps(config))
    with pytest.raises((ModelLoadError, RuntimeError)):
        load_backbone(str(broken))


def test_default_dtypes():
    assert default_dtype(torch.device("cpu")) == torch.float32
