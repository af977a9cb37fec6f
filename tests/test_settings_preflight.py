"""Settings and resources are checked before anything starts; user errors are one line, exit 2.

Every bad setting of the table in ``tests/preflight_cases.py`` goes through the real command line
(``python -m labeler run``): exit status 2, one line on stderr naming the setting, no traceback,
the output folder absent (or byte-identical when it existed). A third method registered with one
``register()`` call runs end to end through ``labeler run --method toy`` on real (local) Ray.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from labeler.config import build_config
from labeler.errors import UserError
from labeler.io.folders import Folder
from labeler.methods.registry import get_method, methods, register
from labeler.methods.slime.algorithm import DEFAULT_LAYERS
from labeler.methods.slime.embedding_set import EmbeddingSet, default_prompt
from labeler.models.backbone import load_backbone
from labeler.runtime.preflight import check_device
from labeler.runtime.run_folder import ConfigMismatchError, RunFolder
from tests import toy_method
from tests.preflight_cases import CASES, labeler_run, make_input, run_case


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_bad_setting_is_refused_before_anything_is_written(case, tmp_path):
    if case.name == "cuda_on_cpu" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    refusal = run_case(case, tmp_path)
    print(f"{case.name}: refused in {refusal.seconds:.2f} s")
    lines = refusal.stderr.strip().splitlines()
    assert refusal.returncode == 2, refusal.stderr
    assert len(lines) == 1, refusal.stderr
    assert lines[0].startswith("labeler: error: ")
    assert refusal.expected in lines[0]
    assert "Traceback" not in refusal.stderr + refusal.stdout
    assert refusal.output_after == refusal.output_before  # absent, or byte-identical


def test_messages_name_the_setting():
    values = {"input": "i", "output": "o", "model": "tiny"}
    with pytest.raises(UserError) as error:
        build_config({"diffseg": {"kl_threshold": -1}}, values)
    assert str(error.value) == "[diffseg] kl_threshold: must be > 0 (got -1)"
    with pytest.raises(UserError, match=r"^\[diffseg\] iterations: must be an integer \(got True\)$"):
        build_config({"diffseg": {"iterations": True}}, values)
    with pytest.raises(UserError, match=r"^dtype: must be 'auto', 'float32'"):
        build_config({"dtype": "float64"}, values)
    with pytest.raises(UserError, match=r"^\[slime\] normalization: must be 'tokens' or 'classes'"):
        build_config({"method": "slime", "embeddings": "s.safetensors",
                      "slime": {"normalization": "softmax"}}, values)
    with pytest.raises(UserError, match="^--method slime needs --embeddings"):
        build_config({"method": "slime"}, values)


def test_diffseg_weights_table_from_toml_keys():
    config = build_config({"diffseg": {"weights": {"64": 0.5, "32": 0.5}}},
                          {"input": "i", "output": "o", "model": "tiny"})
    assert config.settings.weight_map == {64: 0.5, 32: 0.5}
    with pytest.raises(UserError, match="weight for side 64 must be finite and >= 0"):
        build_config({"diffseg": {"weights": {"64": -1}}}, {"input": "i", "output": "o"})


def test_device_checks():
    check_device("cpu")
    check_device("cuda:3", remote=True)  # the workers are on a cluster: only the spelling counts
    with pytest.raises(UserError, match="not a device"):
        check_device("gpu please")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            check_device("cuda:0")


def test_ctrl_c_during_run_is_one_line_and_status_130(tmp_path, monkeypatch, capsys):
    from labeler import cli

    def interrupted(config, progress):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run_job", interrupted)
    status = cli.main(["run", "--input", str(make_input(tmp_path / "in")), "--output",
                       str(tmp_path / "out"), "--model", "tiny"])
    assert status == 130
    assert capsys.readouterr().err == "labeler: interrupted; re-run the same command to resume\n"


# ---- fingerprints ----------------------------------------------------------------------------


def _embedding_set(seed: int) -> EmbeddingSet:
    generator = torch.Generator().manual_seed(seed)
    return EmbeddingSet(embeddings=torch.randn(2, 32, generator=generator),
                        classes=("background", "red", "green"), model="tiny",
                        model_fingerprint=None, prompt=default_prompt(3),
                        layers={kind: list(s) for kind, s in DEFAULT_LAYERS.items()})


def test_a_refit_written_to_the_same_path_is_detected_on_resume(tmp_path):
    path = tmp_path / "parts.safetensors"
    _embedding_set(0).save(str(path))
    flags = {"method": "slime", "input": "in", "output": str(tmp_path / "out"),
             "embeddings": str(path)}
    first = build_config({}, flags)
    run = RunFolder(Folder(first.output))
    assert run.claim(first) is False
    assert run.claim(build_config({}, flags)) is True  # same set: resumes
    _embedding_set(1).save(str(path))  # refit, same path
    with pytest.raises(ConfigMismatchError, match="slime.embedding_set_sha256"):
        run.claim(build_config({}, flags))
    moved = tmp_path / "moved.safetensors"
    path.rename(moved)
    _embedding_set(0).save(str(path))
    assert build_config({}, {**flags, "embeddings": str(moved)}).fingerprint() != first.fingerprint()
    assert build_config({}, flags).fingerprint() == first.fingerprint()  # content, not path


def test_a_unet_override_changes_the_weights_fingerprint(tiny_backbone, tmp_path):
    fine_tuned = load_backbone("tiny", device="cpu").unet
    with torch.no_grad():
        for parameter in fine_tuned.parameters():
            parameter.add_(0.01)
    fine_tuned.save_pretrained(tmp_path / "unet")  # a UNet folder: config.json + safetensors
    overridden = load_backbone("tiny", device="cpu", unet=str(tmp_path / "unet"))
    assert overridden.fingerprint == tiny_backbone.fingerprint  # same architecture
    assert overridden.weights_fingerprint != tiny_backbone.weights_fingerprint
    assert load_backbone("tiny", device="cpu").weights_fingerprint == tiny_backbone.weights_fingerprint
    name, weight = next(iter(overridden.unet.state_dict().items()))
    torch.testing.assert_close(weight, fine_tuned.state_dict()[name])


# ---- a third method --------------------------------------------------------------------------


def test_register_refuses_a_second_method_with_the_same_name():
    assert get_method("toy") is toy_method.SPEC and "toy" in methods()
    register(toy_method.SPEC)  # the same spec again: nothing happens
    with pytest.raises(ValueError, match="already registered"):
        register(get_method("diffseg").__class__(**{**vars(toy_method.SPEC), "summary": "other"}))


def test_toy_method_runs_end_to_end_through_labeler_run(tmp_path):
    images = make_input(tmp_path / "in")
    output = tmp_path / "out"
    env = {"LABELER_METHODS": "tests.toy_method"}
    bad = labeler_run(["--method", "toy", "--input", str(images), "--output", str(output)],
                      tmp_path, env={**env}, timeout=300)
    assert bad.returncode == 0, bad.stderr
    coco = json.loads((output / "coco.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["dark", "bright"]
    assert len(coco["images"]) == 2
    for image in coco["images"]:
        annotations = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        assert sorted(a["category_id"] for a in annotations) == [1, 2]
        bright = next(a for a in annotations if a["category_id"] == 2)
        mask = mask_utils.decode(bright["segmentation"])
        expected = np.zeros((image["height"], image["width"]), np.uint8)
        expected[:, image["width"] // 2:] = 1
        np.testing.assert_array_equal(mask, expected)
    job = tmp_path / "toy.toml"
    job.write_text(f'method = "toy"\ninput = "{images}"\noutput = "{tmp_path / "o2"}"\n'
                   "[toy]\nthreshold = 300\n")
    refused = labeler_run([str(job)], tmp_path, env=env)
    assert refused.returncode == 2
    assert refused.stderr.strip() == "labeler: error: [toy] threshold: must be <= 255 (got 300)"
    assert not (tmp_path / "o2").exists()
