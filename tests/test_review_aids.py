"""Review aids at export: class renames and merges, a seeded val split, FiftyOne's field."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from pycocotools.coco import COCO

from labeler.output.exporters.review import split_of
from tests._output_fixture import write_review_output
from tests.consumers import (
    assert_pooled_iou,
    export,
    reference_masks,
    run_isolated,
    ultralytics_masks,
)

NAMES = ("a.png", "b.png", "c.png")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("review")
    write_review_output(str(root))
    return root / "out"


@pytest.fixture(scope="module")
def seed():
    """A seed that puts a.png alone in val at --val-fraction 0.4 (found, not assumed)."""
    for candidate in range(1000):
        if [split_of(n, 0.4, candidate) for n in NAMES] == ["val", "train", "train"]:
            return candidate
    raise AssertionError("no seed splits the three names 1:2")


def test_a_rename_keeps_ids_and_masks(finished, tmp_path):
    code, text = export(finished, "coco-rle", tmp_path, "--rename", "cat=feline")
    assert code == 0, text
    coco = COCO(str(tmp_path / "annotations.json"))
    assert [c["name"] for c in coco.dataset["categories"]] == ["feline", "dog"]
    original = json.loads((finished / "coco.json").read_text())["annotations"]
    assert coco.dataset["annotations"] == original


def test_two_classes_renamed_to_one_are_merged_per_image(finished, tmp_path):
    code, text = export(finished, "coco-rle", tmp_path, "--rename", "dog=cat")
    assert code == 0, text
    coco = COCO(str(tmp_path / "annotations.json"))
    assert coco.dataset["categories"] == [{"id": 1, "name": "cat"}]
    reference = reference_masks(finished)
    by_name = {image["file_name"]: coco.imgToAnns[image_id] for image_id, image in
               coco.imgs.items()}
    (merged,) = by_name["a.png"]
    ring, block = reference["a.png"]
    assert np.array_equal(coco.annToMask(merged), ring | block)
    assert merged["area"] == int(ring.sum() + block.sum()) and merged["category_id"] == 1
    assert merged["score"] == pytest.approx(
        (0.91 * ring.sum() + 0.42 * block.sum()) / (ring.sum() + block.sum()))
    assert merged["bbox"] == [2.0, 2.0, 29.0, 21.0]
    (single,) = by_name["b.png"]
    assert single["category_id"] == 1 and np.array_equal(coco.annToMask(single),
                                                          reference["b.png"][0])


def test_a_rename_of_an_unknown_class_is_refused(finished, tmp_path, capsys):
    assert export(finished, "coco-rle", tmp_path / "x", "--rename", "horse=cat")[0] == 2
    assert "horse" in capsys.readouterr().err
    assert export(finished, "coco-rle", tmp_path / "x", "--rename", "cat")[0] == 2


def test_the_split_is_seeded_and_stable():
    names = [f"img{i:04d}.jpg" for i in range(2000)]
    first = [split_of(n, 0.2, 7) for n in names]
    assert first == [split_of(n, 0.2, 7) for n in reversed(names)][::-1]
    assert 0.17 < first.count("val") / len(names) < 0.23
    assert first != [split_of(n, 0.2, 8) for n in names]
    assert {split_of(n, 0.0, 7) for n in names} == {"train"}


def test_coco_val_split_writes_two_files_pycocotools_loads(finished, tmp_path, seed):
    code, text = export(finished, "coco-polygons", tmp_path, "--val-fraction", "0.4",
                        "--seed", str(seed), "--tolerance", "0")
    assert code == 0, text
    assert "splits: train 2, val 1" in text
    assert not (tmp_path / "annotations.json").exists()
    train = COCO(str(tmp_path / "annotations_train.json"))
    val = COCO(str(tmp_path / "annotations_val.json"))
    assert sorted(i["file_name"] for i in train.imgs.values()) == ["b.png", "c.png"]
    assert [i["file_name"] for i in val.imgs.values()] == ["a.png"]
    assert len(val.dataset["annotations"]) == 2 and len(train.dataset["annotations"]) == 1
    assert json.loads((tmp_path / "export.json").read_text())["splits"] == {"train": 2, "val": 1}


def test_cvat_val_split_is_two_subsets_for_datumaro(finished, tmp_path, seed):
    dm = pytest.importorskip("datumaro")
    code, text = export(finished, "cvat", tmp_path, "--val-fraction", "0.4", "--seed", str(seed),
                        "--images", "copy")
    assert code == 0, text
    dataset = dm.Dataset.import_from(str(tmp_path), "coco_instances")
    assert sorted((item.subset, item.id) for item in dataset) == [
        ("train", "b"), ("train", "c"), ("val", "a")]
    assert all(item.media.has_data for item in dataset)


def test_yolo_val_is_not_the_training_images(finished, tmp_path, seed):
    out = tmp_path / "yolo"
    code, text = export(finished, "yolo-seg", out, "--val-fraction", "0.4", "--seed", str(seed),
                        "--images", "copy", "--tolerance", "0")
    assert code == 0, text
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert (data["train"], data["val"]) == ("images/train", "images/val")
    assert (out / "images" / "val" / "a.png").is_file()
    assert (out / "labels" / "val" / "a.txt").is_file()
    assert sorted(p.name for p in (out / "images" / "train").iterdir()) == ["b.png", "c.png"]
    names, found = ultralytics_masks(out / "data.yaml", tmp_path)
    assert names == {"0": "cat", "1": "dog"}
    assert json.loads((tmp_path / "splits.json").read_text()) == {
        "train": ["b.png", "c.png"], "val": ["a.png"]}
    reference = reference_masks(finished)
    for name, masks in reference.items():
        assert_pooled_iou(found[name], masks, 0.85)


def test_hf_val_split_is_a_validation_split(finished, tmp_path, seed):
    datasets = pytest.importorskip("datasets")
    code, text = export(finished, "hf", tmp_path / "hf", "--val-fraction", "0.4", "--seed",
                        str(seed))
    assert code == 0, text
    loaded = datasets.load_dataset(str(tmp_path / "hf"), cache_dir=str(tmp_path / "cache"))
    assert sorted(loaded) == ["train", "validation"]
    assert loaded["validation"]["file_name"] == ["a.png"]
    assert loaded["train"]["file_name"] == ["b.png", "c.png"]


def test_fiftyone_loader_names_the_label_field(finished, tmp_path):
    assert export(finished, "fiftyone", tmp_path / "fo")[0] == 0
    loader = (tmp_path / "fo" / "load_fiftyone.py").read_text()
    compile(loader, "load_fiftyone.py", "exec")
    assert "LABEL_FIELD = 'predictions'" in loader
    assert f"DATA_PATH = {str(finished.parent / 'src')!r}" in loader
    assert export(finished, "fiftyone", tmp_path / "mine", "--label-field", "pseudo",
                  "--images", "copy")[0] == 0
    loader = (tmp_path / "mine" / "load_fiftyone.py").read_text()
    assert "LABEL_FIELD = 'pseudo'" in loader and "DATA_PATH = 'data'" in loader


@pytest.mark.slow
def test_fiftyone_runs_the_loader_into_the_label_field(finished, tmp_path):
    assert export(finished, "fiftyone", tmp_path / "fo", "--label-field", "pseudo")[0] == 0
    run_isolated("fiftyone", "fiftyone_loader.py", str(tmp_path / "fo"), str(tmp_path),
                 env={"FIFTYONE_DATABASE_DIR": str(tmp_path / "db"),
                      "FIFTYONE_DO_NOT_TRACK": "true"})
    loaded = json.loads((tmp_path / "loaded.json").read_text())
    assert "pseudo" in loaded["fields"] and "ground_truth" not in loaded["fields"]
    reference = reference_masks(finished)
    assert loaded["found"]["a.png"] == [["cat", 0.91, int(reference["a.png"][0].sum())],
                                        ["dog", 0.42, int(reference["a.png"][1].sum())]]
    assert loaded["found"]["c.png"] == []


@pytest.mark.parametrize("flags", [["coco-rle", "--label-field", "x"],
                                   ["label-maps", "--val-fraction", "0.2"],
                                   ["coco-rle", "--val-fraction", "1.5"],
                                   ["fiftyone", "--label-field", "not a name"]])
def test_options_a_format_does_not_read_are_refused(finished, tmp_path, flags):
    assert export(finished, flags[0], tmp_path / "x", *flags[1:])[0] == 2
