"""`labeler diffews train` on the tiny model: writes a loadable checkpoint, resumes exactly, and
draws absent-class episodes when asked."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from safetensors.torch import load_file

from labeler.cli import main
from labeler.methods.annotations import AnnotatedImage
from labeler.methods.diffews import train as train_module
from labeler.methods.diffews.model import load_diffews_backbone
from labeler.methods.diffews.support import mask_images
from labeler.testing.worlds import FEW_SHOT_CLASSES, few_shot_world
from tests.diffews_helpers import image_rows, run_cli, support_folder

FLAGS = ["--classes", "background,red,green", "--model", "tiny", "--steps", "2", "--save-every", "1",
         "--size", "64", "--lr", "1e-3", "--accumulation", "1", "--seed", "3"]


class Interrupted(Exception):
    """Stands for a killed training process."""


def _train(support, output, *extra: str) -> int:
    """``labeler diffews train`` with FLAGS; ``extra`` flags come last, so they win."""
    return main(["diffews", "train", "--images", str(support), "--masks", str(support),
                 "--output", str(output), *FLAGS, *extra])


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


def test_absent_episodes_take_queries_without_the_class_and_an_empty_target(tiny_backbone):
    rng = np.random.default_rng(0)
    samples = [AnnotatedImage(str(i), *few_shot_world(rng, 64), "0" * 16) for i in range(6)]
    data = train_module.encode_dataset(tiny_backbone, samples, len(FEW_SHOT_CLASSES), 64)
    empty = train_module._posterior(tiny_backbone, mask_images([np.zeros((64, 64), bool)], 64))[0]
    for share in (0.0, 0.25):
        generator = torch.Generator().manual_seed(5)
        absent = 0
        for _ in range(400):
            cls, query, supports = train_module.draw_episode(data, 2, generator, share)
            assert all(cls in data[i].classes for i in supports)
            if cls not in data[query].classes:
                absent += 1
                torch.testing.assert_close(data[query].masks[cls], empty)  # the target: no mask
        if share == 0:
            assert absent == 0
        else:
            assert 0.15 < absent / 400 < 0.35, absent


def test_a_bad_absent_share_is_one_line_and_exit_2(tmp_path, capsys):
    support = support_folder(tmp_path / "support")
    code = _train(support, tmp_path / "out", "--absent-share", "1.5")
    assert code == 2 and "absent_share must be in [0, 1)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_absent_share_flag_reaches_the_episodes_train_draws(tmp_path, monkeypatch):
    support = support_folder(tmp_path / "support")
    shares = []
    draw = train_module.draw_episode

    def recording_draw(data, max_shots, generator, absent_share=0.0):
        shares.append(absent_share)
        return draw(data, max_shots, generator, absent_share)

    monkeypatch.setattr(train_module, "draw_episode", recording_draw)
    assert _train(support, tmp_path / "out", "--steps", "1", "--absent-share", "0.5") == 0
    # one training episode (1 step x 1 episode) draws with the share; validation draws present ones
    assert shares[0] == 0.5 and shares.count(0.5) == 1 and set(shares[1:]) == {0.0}, shares
    settings = json.loads((tmp_path / "out" / train_module.SETTINGS).read_text())["settings"]
    assert settings["absent_share"] == 0.5  # recorded, so a resume with another share is refused


def test_labeler_run_labels_a_collection_with_the_checkpoint_train_wrote(tmp_path):
    support = support_folder(tmp_path / "support")
    assert _train(support, tmp_path / "ckpt") == 0
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("one.jpg", "two.jpg"):
        shutil.copy(support / name, photos / name)
    Image.new("RGB", (40, 24), (200, 40, 40)).save(photos / "small.png")
    (photos / "broken.png").write_bytes(b"not a png")
    output = tmp_path / "out"
    code, text = run_cli("--method", "diffews", "--model", str(tmp_path / "ckpt"), "--support-images",
                         str(support), "--support-masks", str(support), "--classes", "background,red,green",
                         "--input", str(photos), "--output", str(output))
    assert code == 0, text
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(output / "coco.json"))
    rows = image_rows(output)
    assert {name: row["status"] for name, row in rows.items()} == {
        "one.jpg": "labeled", "two.jpg": "labeled", "small.png": "labeled", "broken.png": "failed"}
    assert rows["broken.png"]["reason"] == "not_an_image"
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["red", "green"]
    assert len(coco.getImgIds()) == 3
