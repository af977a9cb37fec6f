"""`labeler diffews train` on the tiny model: writes a loadable checkpoint, resumes exactly."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from labeler.cli import main
from labeler.methods.diffews import train as train_module
from labeler.methods.diffews.model import load_diffews_backbone
from tests.diffews_helpers import support_folder

FLAGS = ["--classes", "background,red,green", "--model", "tiny", "--steps", "2", "--save-every", "1",
         "--size", "64", "--lr", "1e-3", "--accumulation", "1", "--seed", "3"]


class Interrupted(Exception):
    """Stands for a killed training process."""


def _train(support, output) -> int:
    return main(["diffews", "train", "--images", str(support), "--masks", str(support),
                 "--output", str(output), *FLAGS])


def test_training_writes_a_checkpoint_and_an_interrupted_run_resumes_exactly(tmp_path, monkeypatch):
    support = support_folder(tmp_path / "support")
    assert _train(support, tmp_path / "straight") == 0
    backbone, _ = load_diffews_backbone(str(tmp_path / "straight"))  # `--model DIR` loads it
    assert backbone.unet.conv_in.support.in_channels == 8
    straight = load_file(tmp_path / "straight" / "unet" / "diffusion_pytorch_model.safetensors")

    save = train_module._save

    def save_then_die(output, *args):  # the fault: the process dies right after the first save
        save(output, *args)
        raise Interrupted

    monkeypatch.setattr(train_module, "_save", save_then_die)
    with pytest.raises(Interrupted):
        _train(support, tmp_path / "resumed")
    monkeypatch.setattr(train_module, "_save", save)
    assert torch.load(tmp_path / "resumed" / train_module.STATE, weights_only=True)["step"] == 1
    assert _train(support, tmp_path / "resumed") == 0
    resumed = load_file(tmp_path / "resumed" / "unet" / "diffusion_pytorch_model.safetensors")
    assert sorted(resumed) == sorted(straight) and "conv_in_ref.weight" in resumed
    for name, tensor in straight.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=0)
    changed = main(["diffews", "train", "--images", str(support), "--masks", str(support),
                    "--output", str(tmp_path / "resumed"), *FLAGS[:-2], "--seed", "4"])
    assert changed == 2  # other settings on an existing training output are refused
