"""``labeler slime fit/import/info`` and ``--method slime`` wiring (registry, job categories)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

import labeler
from labeler.cli import main
from labeler.config import build_config
from labeler.methods.slime.embedding_set import EmbeddingSet
from tests.helpers import flat_regions_image


def write_annotated(folder, stems=("one",)):
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for stem in stems:
        image, regions = flat_regions_image(64, 64, "quadrants")
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        (folder / "images" / f"{stem}.png").write_bytes(buffer.getvalue())
        np.save(folder / "masks" / f"{stem}.npy", np.minimum(regions, 2))


@pytest.fixture(scope="module")
def fitted_set(tmp_path_factory, labeler_cache):
    folder = tmp_path_factory.mktemp("slime-cli")
    write_annotated(folder)
    output = folder / "parts.safetensors"
    code = main(["slime", "fit", "--images", str(folder / "images"), "--masks", str(folder / "masks"),
                 "--classes", "background, red ,green", "--output", str(output), "--model", "tiny",
                 "--seed", "3", "--epochs", "1", "--fit-size", "128", "--mask-size", "16",
                 "--patches-per-side", "1", "--patch-size", "512", "--device", "cpu", "--no-progress"])
    assert code == 0
    return folder, output


def test_fit_writes_a_set_with_metadata(fitted_set, capsys):
    _, output = fitted_set
    embedding_set = EmbeddingSet.load(str(output))
    assert embedding_set.classes == ("background", "red", "green")
    assert embedding_set.model == "tiny" and embedding_set.embeddings.shape == (2, 32)
    assert embedding_set.fit["settings"]["seed"] == 3 and embedding_set.fit["settings"]["epochs"] == 1
    assert embedding_set.fit["settings"]["lr"] == 0.1  # untouched flags keep the library default
    assert embedding_set.inference["patches_per_side"] == 1
    assert main(["slime", "info", str(output)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["classes"] == ["background", "red", "green"] and info["sha256"] == embedding_set.sha256


def test_fit_refuses_to_overwrite_and_bad_classes(fitted_set, capsys):
    folder, output = fitted_set
    args = ["slime", "fit", "--images", str(folder / "images"), "--masks", str(folder / "masks"),
            "--output", str(output), "--model", "tiny"]
    assert main(args + ["--classes", "background,red,green"]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert main(args + ["--classes", "background"]) == 2
    assert "at least two classes" in capsys.readouterr().err
    assert main(args[:-4] + ["--output", str(folder / "new.safetensors"), "--classes", "bg,a"]) == 2
    assert "values must be 0..1" in capsys.readouterr().err


def test_import_official_folder(tmp_path, capsys):
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    for index in range(2):
        torch.save(torch.randn(1, 1, 32), folder / f"embedding_{index}.pth")
    output = tmp_path / "official.safetensors"
    assert main(["slime", "import", "--folder", str(folder), "--classes", "background,a,b",
                 "--output", str(output), "--model", "tiny"]) == 0
    imported = EmbeddingSet.load(str(output))
    assert imported.channel_order == "bgr" and imported.model_fingerprint is not None
    assert "2 embeddings of width 32" in capsys.readouterr().out


def test_registry_builds_slime_with_the_sets_model_and_options(fitted_set):
    _, output = fitted_set
    config = build_config({"slime": {"timestep": 80, "input_size": 128}},
                          {"method": "slime", "input": "x", "output": "y", "embeddings": str(output),
                           "device": "cpu", "seed": 4})
    segmenter = config.build_segmenter()
    assert segmenter.backbone.name == "tiny"  # the set's model
    assert segmenter.options.timestep == 80 and segmenter.options.patches_per_side == 1
    assert segmenter.seed == 4
    assert segmenter.categories == [
        {"id": 1, "name": "red", "supercategory": "slime"},
        {"id": 2, "name": "green", "supercategory": "slime"},
    ]
    image, _ = flat_regions_image(48, 40, "quadrants")
    (labels,) = segmenter.label([image])
    assert labels.label_map.shape == (48, 40)
    with pytest.raises(ValueError, match="unknown \\[slime\\] settings: patch_treshold"):
        build_config({"slime": {"patch_treshold": 0.3}},  # refused at config time now
                     {"method": "slime", "input": "x", "output": "y", "embeddings": str(output)})


def test_the_api_takes_slimes_embedding_set_as_a_method_keyword(fitted_set):
    _, output = fitted_set
    segmenter = labeler.Labeler(method="slime", embeddings=str(output), device="cpu", seed=4,
                                timestep=80, input_size=128)
    assert segmenter.segmenter.backbone.name == "tiny" and segmenter.segmenter.seed == 4
    assert segmenter.segmenter.options.timestep == 80
    assert [c["name"] for c in segmenter.categories] == ["red", "green"]


def test_job_knows_the_categories_without_loading_a_model(fitted_set):
    from labeler.runtime.job import _categories_of

    _, output = fitted_set
    config = build_config({}, {"method": "slime", "input": "x", "output": "y", "embeddings": str(output)})
    assert [category["name"] for category in _categories_of(config)] == ["red", "green"]
