"""The Label Studio exports' options: image URL prefix, annotations or predictions, one region
per segment, meta; the real server is in tests/test_label_studio_server.py (slow)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from labeler.output.exporters.label_studio import default_url_prefix
from tests._output_fixture import write_review_output
from tests.consumers import assert_polygon_regions, export, iou, reference_masks


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("studio")
    write_review_output(str(root))
    return root / "out"


def _tasks(folder) -> list[dict]:
    return json.loads((folder / "tasks.json").read_text())


@pytest.mark.parametrize("prefix", ["/data/local-files/?d=photos/", "s3://bucket/photos/",
                                    "https://host/photos/"])
def test_the_image_url_is_the_prefix_and_the_relative_name(finished, tmp_path, prefix):
    code, text = export(finished, "label-studio-brush", tmp_path, "--image-url-prefix", prefix)
    assert code == 0, text
    tasks = _tasks(tmp_path)
    assert [t["data"]["image"] for t in tasks] == [prefix + n for n in ("a.png", "b.png",
                                                                        "c.png")]


def test_without_a_prefix_the_image_roots_folder_is_served(finished, tmp_path):
    """The document root is the image root's parent (Label Studio serves no storage at it)."""
    assert export(finished, "label-studio", tmp_path / "a")[0] == 0
    assert _tasks(tmp_path / "a")[0]["data"]["image"] == "/data/local-files/?d=src/a.png"
    assert export(finished, "label-studio", tmp_path / "b", "--images", "copy")[0] == 0
    assert _tasks(tmp_path / "b")[0]["data"]["image"] == "/data/local-files/?d=images/a.png"
    assert (tmp_path / "b" / "images" / "a.png").is_file()


@pytest.mark.parametrize(("root", "placed", "prefix"), [
    ("/data/photos", None, "/data/local-files/?d=photos/"),
    ("file:///data/photos/", None, "/data/local-files/?d=photos/"),
    ("s3://bucket/photos", None, "s3://bucket/photos/"),
    ("/data/photos", "images", "/data/local-files/?d=images/"),
    (None, None, None),
])
def test_default_url_prefix(root, placed, prefix):
    assert default_url_prefix(root, placed) == prefix


def test_results_carry_model_version_and_score_and_tasks_meta(finished, tmp_path):
    assert export(finished, "label-studio", tmp_path)[0] == 0
    first = _tasks(tmp_path)[0]
    (prediction,) = first["predictions"]
    assert prediction["model_version"] == "labeler-slime-fixture-run"
    assert prediction["score"] == pytest.approx((0.91 + 0.42) / 2)
    assert [r["score"] for r in prediction["result"]] == [0.91, 0.42]
    assert {r["model_version"] for r in prediction["result"]} == {prediction["model_version"]}
    masks = reference_masks(finished)["a.png"]
    assert first["meta"]["area"] == sum(int(m.sum()) for m in masks)
    assert [r["area"] for r in first["meta"]["regions"]] == [int(m.sum()) for m in masks]
    assert [r["score"] for r in first["meta"]["regions"]] == [0.91, 0.42]


def test_as_annotations_moves_the_results(finished, tmp_path):
    assert export(finished, "label-studio-brush", tmp_path, "--as-annotations")[0] == 0
    for task in _tasks(tmp_path):
        assert "predictions" not in task
        (annotation,) = task["annotations"]
        assert annotation["model_version"].startswith("labeler-slime")


def test_polygons_are_one_region_per_segment_small_fragments_dropped(finished, tmp_path):
    assert export(finished, "label-studio", tmp_path, "--tolerance", "0")[0] == 0
    reference = reference_masks(finished)
    for task in _tasks(tmp_path):  # a.png's one-pixel fragment: below the default 16 pixels
        name = task["data"]["file_name"]
        assert_polygon_regions(task["predictions"][0]["result"], reference[name], name)
    assert export(finished, "label-studio", tmp_path / "all", "--tolerance", "0",
                  "--fragment-min-area", "0")[0] == 0
    ring = _tasks(tmp_path / "all")[0]["predictions"][0]["result"][0]
    points = (np.array(ring["value"]["points"]) / 100.0 * [32, 24]).ravel()
    drawn = mask_utils.decode(mask_utils.frPyObjects([points.tolist()], 24, 32)[0])
    assert iou(drawn.astype(bool), reference["a.png"][0].astype(bool)) == 1.0


@pytest.mark.parametrize("flag", [["--image-url-prefix", "x/"], ["--as-annotations"],
                                  ["--fragment-min-area", "3"]])
def test_label_studio_options_are_refused_for_other_formats(finished, tmp_path, capsys, flag):
    assert export(finished, "coco-rle", tmp_path, *flag)[0] == 2
    assert flag[0] in capsys.readouterr().err
