"""End-to-end tests of ``labeler eval`` on fixture outputs (local folder and ``memory://``).

Expected numbers are hand-computed in the comments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid

import fsspec
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from _output_fixture import (
    FixtureImage,
    classes_from_label_map,
    segments_from_label_map,
    write_coco_gt,
    write_label_maps,
    write_output,
)

from labeler.eval import command as eval_command
from labeler.eval.evaluate import EvalOptions, evaluate


def run_cli(argv: list[str]) -> int:
    """Tiny stand-in for the main CLI: register the subcommand and dispatch."""
    parser = argparse.ArgumentParser(prog="labeler")
    sub = parser.add_subparsers(dest="command", required=True)
    eval_command.add_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def read_json(uri: str) -> dict:
    with fsspec.open(uri, "r") as f:
        return json.load(f)


def rgb(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


@pytest.fixture
def memroot():
    root = f"memory://eval-{uuid.uuid4().hex}"
    yield root
    fs = fsspec.filesystem("memory")
    path = root[len("memory://") :]
    if fs.exists("/" + path):
        fs.rm("/" + path, recursive=True)


# ---------------------------------------------------------------------------------------------
# SLiMe-style (class-aware) predictions vs label-map PNGs, K = 3 (background, wheel, body).
# GT names wheel = 1, body = 2; predicted category ids are swapped (body = 1, wheel = 2), so only
# the name mapping is right.
#   a: gt   [[0 0 1 1], [2 2 2 255]]    pred [[0 1 1 1], [2 2 0 2]]
#   b: gt   [[0 0 0 0], [2 2 2 2]]      pred [[0 0 0 1], [2 2 2 2]]
# Summed confusion (pixel under 255 dropped): [[4,2,0],[0,2,0],[1,0,6]]
#   IoU = [4/7, 2/4, 6/7]  mIoU = 27/42 = 0.642857  pixel acc = 12/15 = 0.8
# SLiMe: a: [1/3, 2/3, 2/3]; b: [3/4, skip, 1]
#   per class [13/24, 2/3, 5/6], mIoU = 49/72 = 0.680556, image mean = (5/9 + 7/8)/2 = 103/144
SLIME_GT = {
    "a": np.array([[0, 0, 1, 1], [2, 2, 2, 255]]),
    "b": np.array([[0, 0, 0, 0], [2, 2, 2, 2]]),
}
SLIME_PRED = {
    "a": np.array([[0, 1, 1, 1], [2, 2, 0, 2]]),
    "b": np.array([[0, 0, 0, 1], [2, 2, 2, 2]]),
}
GT_CLASSES = ["background", "wheel", "body"]
PRED_CATEGORIES = [{"id": 1, "name": "body"}, {"id": 2, "name": "wheel"}]
INDEX_TO_CATEGORY = {1: 2, 2: 1}  # GT class index -> predicted category id


def build_slime_case(root: str, with_extra: bool = True) -> tuple[str, str]:
    images = [
        FixtureImage(
            name, rgb(2, 4, i), classes_from_label_map(SLIME_PRED[name], INDEX_TO_CATEGORY)
        )
        for i, name in enumerate(["a", "b"])
    ]
    gt_maps = dict(SLIME_GT)
    if with_extra:
        images.append(FixtureImage("broken", rgb(2, 4, 9), failed="decode error: truncated file"))
        gt_maps["broken"] = np.zeros((2, 4), dtype=np.uint8)
    write_output(root, images, PRED_CATEGORIES)
    write_label_maps(root + "/gt", {k: v.astype(np.uint8) for k, v in gt_maps.items()}, GT_CLASSES)
    return root + "/out", root + "/gt"


def check_slime_numbers(report: dict) -> None:
    assert report["prediction_kind"] == "classes"
    assert report["class_mapping"]["rule"] == "name"
    assert report["class_mapping"]["categories"] == {"body": "body", "wheel": "wheel"}
    miou = report["protocols"]["miou"]
    assert miou["mIoU"] == pytest.approx(27 / 42)
    assert miou["pixel_accuracy"] == pytest.approx(0.8)
    assert [miou["per_class"][c]["iou"] for c in GT_CLASSES] == pytest.approx([4 / 7, 1 / 2, 6 / 7])
    slime = report["protocols"]["slime"]
    assert slime["mIoU"] == pytest.approx(49 / 72)
    assert slime["mean_image_mIoU"] == pytest.approx(103 / 144)
    assert [slime["per_class"][c]["iou"] for c in GT_CLASSES] == pytest.approx(
        [13 / 24, 2 / 3, 5 / 6]
    )
    assert [slime["per_class"][c]["n_images"] for c in GT_CLASSES] == [2, 1, 2]


def test_eval_slime_predictions_against_label_maps(tmp_path, capsys):
    out, gt = build_slime_case(str(tmp_path))
    assert run_cli(["eval", "--pred", out, "--gt", gt]) == 0
    stdout = capsys.readouterr().out
    assert "64.29" in stdout and "68.06" in stdout  # mIoU and SLiMe mIoU, percent
    report = json.loads((tmp_path / "out" / "eval" / "eval.json").read_text())
    check_slime_numbers(report)
    assert report["images"]["evaluated"] == 2
    assert report["images"]["failed_in_run"] == 1
    assert report["images"]["gt_without_prediction"] == 1
    md = (tmp_path / "out" / "eval" / "eval.md").read_text()
    assert "| wheel |" in md and "64.29" in md
    # --require-all turns the missing prediction into exit status 1
    assert run_cli(["eval", "--pred", out, "--gt", gt, "--require-all", "--no-files"]) == 1


def test_eval_class_match_by_id_uses_category_ids(tmp_path):
    out, gt = build_slime_case(str(tmp_path), with_extra=False)
    rc = run_cli(
        ["eval", "--pred", out, "--gt", gt, "--class-match", "id", "--out", str(tmp_path / "r")]
    )
    assert rc == 0
    report = json.loads((tmp_path / "r" / "eval.json").read_text())
    assert report["class_mapping"]["rule"] == "id"
    # body (id 1) is now read as wheel (label 1): wheel/body swapped, scores drop
    assert report["class_mapping"]["categories"] == {"body": "wheel", "wheel": "body"}
    assert report["protocols"]["miou"]["mIoU"] < 0.5


def test_eval_in_memory_filesystem(memroot):
    out, gt = build_slime_case(memroot)
    assert run_cli(["eval", "--pred", out, "--gt", gt, "--protocol", "miou,slime"]) == 0
    report = read_json(out + "/eval/eval.json")
    check_slime_numbers(report)
    with fsspec.open(out + "/eval/eval.md", "r") as f:
        assert "SLiMe per-image protocol" in f.read()


# ---------------------------------------------------------------------------------------------
# DiffSeg-style (class-agnostic) predictions, no classes file (K = 2 found from the data).
#   A (2x3): gt [[0 0 0],[1 1 1]]  segments [[0 0 1],[1 1 2]]
#   B (2x2): gt [[1 1],[0 0]]      segments [[0 0],[0 unannotated]]
# Per image: TP [2,4], FP [0,2], FN [3,1], ALL 10 -> acc 0.6, IoU [2/5, 4/7]
# Dataset-level: H = [[3,1,0|1],[2,2,1|0]] -> 0->0, 1->1: TP [3,2], FP [2,1], FN [2,3]
#   -> acc 0.5, IoU [3/7, 1/3]
def build_diffseg_case(root: str) -> tuple[str, str]:
    seg_a = np.array([[0, 0, 1], [1, 1, 2]])
    seg_b = np.array([[0, 0], [0, -1]])
    images = [
        FixtureImage("A", rgb(2, 3, 1), segments_from_label_map(seg_a)),
        FixtureImage("B", rgb(2, 2, 2), segments_from_label_map(seg_b)),
    ]
    write_output(root, images, [{"id": 1, "name": "segment"}])
    write_label_maps(
        root + "/gt",
        {
            "A": np.array([[0, 0, 0], [1, 1, 1]], np.uint8),
            "B": np.array([[1, 1], [0, 0]], np.uint8),
        },
    )
    return root + "/out", root + "/gt"


def test_eval_diffseg_hungarian_protocols(tmp_path, capsys):
    out, gt = build_diffseg_case(str(tmp_path))
    assert run_cli(["eval", "--pred", out, "--gt", gt]) == 0
    report = json.loads((tmp_path / "out" / "eval" / "eval.json").read_text())
    assert report["prediction_kind"] == "segments"
    assert report["num_classes"] == 2
    assert list(report["protocols"]) == ["hungarian", "hungarian-dataset"]
    h = report["protocols"]["hungarian"]
    assert h["pixel_accuracy"] == pytest.approx(0.6)
    assert h["mIoU"] == pytest.approx((2 / 5 + 4 / 7) / 2)
    assert [h["per_class"][c]["fp"] for c in report["classes"]] == [0, 2]
    d = report["protocols"]["hungarian-dataset"]
    assert d["pixel_accuracy"] == pytest.approx(0.5)
    assert d["mIoU"] == pytest.approx((3 / 7 + 1 / 3) / 2)
    assert d["assignment"] == {"class_0": 0, "class_1": 1}
    assert "48.57" in capsys.readouterr().out


def test_eval_refuses_semantic_protocol_on_segments(tmp_path, capsys):
    out, gt = build_diffseg_case(str(tmp_path))
    assert run_cli(["eval", "--pred", out, "--gt", gt, "--protocol", "miou"]) == 2
    assert "class-agnostic" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# A named DiffSeg run (categories red, blue, then segment for what no name explains), K = 3.
#   gt [[0 0 1 1], [2 2 0 0]] (background, red, blue); segments [[0 0 1 1], [2 2 3 3]] named
#   segment, red, blue, red. Unnamed pixels count as unannotated:
#   background: pred [[0 0 1 1], [2 2 1 1]] -> IoU [2/4, 2/4, 2/2], mIoU 2/3, pixel acc 6/8
#   void:       background gets no TP      -> IoU [0, 2/4, 1], mIoU 1/2
#   segments (class-agnostic): Hungarian matches 3 of the 4 segments, TP 6 of 8 -> acc 0.75
NAMED_GT = np.array([[0, 0, 1, 1], [2, 2, 0, 0]], np.uint8)
NAMED_SEGMENTS = np.array([[0, 0, 1, 1], [2, 2, 3, 3]])
NAMED_CATEGORIES = [{"id": 1, "name": "red", "supercategory": "name"},
                    {"id": 2, "name": "blue", "supercategory": "name"},
                    {"id": 3, "name": "segment", "supercategory": "segment"}]


def build_named_case(root: str, unnamed: str = "segment") -> tuple[str, str]:
    names = [3, 1, 2, 1]  # category of segments 0..3
    masks = [(names[s], NAMED_SEGMENTS == s, 0.9) for s in range(4)
             if unnamed == "segment" or names[s] != 3]
    categories = NAMED_CATEGORIES if unnamed == "segment" else NAMED_CATEGORIES[:2]
    write_output(root, [FixtureImage("A", rgb(2, 4, 1), masks)], categories)
    write_label_maps(root + "/gt", {"A": NAMED_GT}, ["background", "red", "blue"])
    return root + "/out", root + "/gt"


@pytest.mark.parametrize("unnamed", ["segment", "drop"])
def test_eval_named_diffseg_run_scores_names_semantically(tmp_path, unnamed):
    out, gt = build_named_case(str(tmp_path), unnamed)
    assert run_cli(["eval", "--pred", out, "--gt", gt]) == 0
    report = json.loads((tmp_path / "out" / "eval" / "eval.json").read_text())
    assert report["prediction_kind"] == "classes"
    assert list(report["protocols"]) == ["miou", "slime"]
    mapping = report["class_mapping"]
    assert mapping["categories"] == {"red": "red", "blue": "blue"}
    assert mapping["unmapped"] == [] and report["warnings"] == []
    assert mapping["unnamed"] == (["segment"] if unnamed == "segment" else [])
    miou = report["protocols"]["miou"]
    assert [miou["per_class"][c]["iou"] for c in ("background", "red", "blue")] == pytest.approx(
        [1 / 2, 1 / 2, 1])
    assert miou["mIoU"] == pytest.approx(2 / 3) and miou["pixel_accuracy"] == pytest.approx(6 / 8)
    markdown = (tmp_path / "out" / "eval" / "eval.md").read_text()
    assert ("unnamed segments (scored as unannotated): segment" in markdown) == (unnamed == "segment")


def test_eval_named_diffseg_unnamed_as_void_and_class_agnostic(tmp_path):
    out, gt = build_named_case(str(tmp_path))
    assert run_cli(["eval", "--pred", out, "--gt", gt, "--unannotated", "void", "--no-files"]) == 0
    report = evaluate(out, gt, EvalOptions(unannotated="void"))
    assert [report["protocols"]["miou"]["per_class"][c]["iou"]
            for c in ("background", "red", "blue")] == pytest.approx([0, 1 / 2, 1])
    segments = evaluate(out, gt, EvalOptions(pred_kind="segments"))
    assert list(segments["protocols"]) == ["hungarian", "hungarian-dataset"]
    assert segments["protocols"]["hungarian"]["pixel_accuracy"] == pytest.approx(0.75)


def test_eval_reports_unpairable_inputs(tmp_path, capsys):
    out, _ = build_diffseg_case(str(tmp_path))
    write_label_maps(str(tmp_path / "other"), {"zzz": np.zeros((2, 2), np.uint8)})
    assert run_cli(["eval", "--pred", out, "--gt", str(tmp_path / "other")]) == 2
    assert "no predicted image could be paired" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# COCO instances ground truth and COCO segmentation AP.
def _box(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


GT_CATS = [{"id": 3, "name": "car"}, {"id": 7, "name": "person"}]
CAR1 = _box(20, 24, 2, 8, 2, 9)
CAR2 = _box(20, 24, 12, 18, 14, 22)
PERSON = _box(20, 24, 2, 10, 14, 20)


def build_coco_case(root: str, predict_car2: bool) -> tuple[str, str]:
    write_coco_gt(
        root + "/gt.json",
        [("scene.png", 20, 24)],
        [("scene.png", 3, CAR1), ("scene.png", 3, CAR2), ("scene.png", 7, PERSON)],
        GT_CATS,
    )
    pred_cats = [{"id": 1, "name": "person"}, {"id": 2, "name": "car"}]
    masks = [(2, CAR1, 0.9), (1, PERSON, 0.8)]
    if predict_car2:
        masks.append((2, CAR2, 0.7))
    write_output(root, [FixtureImage("scene", rgb(20, 24, 3), masks)], pred_cats)
    return root + "/out", root + "/gt.json"


def test_eval_coco_ap_perfect_predictions(tmp_path):
    out, gt = build_coco_case(str(tmp_path), predict_car2=True)
    assert run_cli(["eval", "--pred", out, "--gt", gt]) == 0
    report = json.loads((tmp_path / "out" / "eval" / "eval.json").read_text())
    assert report["gt_format"] == "coco"
    assert list(report["protocols"]) == ["miou", "slime", "coco-ap"]
    ap = report["protocols"]["coco-ap"]
    assert ap["AP"] == pytest.approx(1.0)
    assert ap["AP50"] == pytest.approx(1.0) and ap["AP75"] == pytest.approx(1.0)
    assert ap["n_results"] == 3 and ap["class_agnostic"] is False
    # semantic maps rasterised from the GT instances are reproduced exactly
    assert report["protocols"]["miou"]["mIoU"] == pytest.approx(1.0)
    assert report["classes"] == ["background", "car", "person"]


def test_eval_coco_ap_one_missed_instance(tmp_path):
    # car: 2 GT, 1 perfect detection -> recall 0.5 at precision 1: the 101-point interpolated
    # precision is 1 for recall thresholds 0.00..0.50 (51 of 101) and 0 above -> AP = 51/101 at
    # every IoU threshold. person: AP 1. Mean over categories: (51/101 + 1) / 2.
    out, gt = build_coco_case(str(tmp_path), predict_car2=False)
    assert run_cli(["eval", "--pred", out, "--gt", gt, "--protocol", "coco-ap"]) == 0
    ap = json.loads((tmp_path / "out" / "eval" / "eval.json").read_text())["protocols"]["coco-ap"]
    assert ap["AP"] == pytest.approx((51 / 101 + 1) / 2)
    assert ap["AR100"] == pytest.approx((0.5 + 1) / 2)


def test_eval_coco_ap_class_agnostic_segments(memroot):
    write_coco_gt(
        memroot + "/gt.json",
        [("scene.png", 20, 24)],
        [("scene.png", 3, CAR1), ("scene.png", 7, PERSON)],
        GT_CATS,
    )
    masks = [(1, CAR1, 0.9), (1, PERSON, 0.8)]
    write_output(
        memroot, [FixtureImage("scene", rgb(20, 24, 3), masks)], [{"id": 1, "name": "segment"}]
    )
    out = memroot + "/out"
    assert run_cli(["eval", "--pred", out, "--gt", memroot + "/gt.json"]) == 0
    report = read_json(out + "/eval/eval.json")
    assert report["protocols"]["coco-ap"]["class_agnostic"] is True
    assert report["protocols"]["coco-ap"]["AP"] == pytest.approx(1.0)
    # background, car and person are each one segment (background is unannotated -> void, a miss)
    h = report["protocols"]["hungarian"]
    n_bg = 20 * 24 - CAR1.sum() - PERSON.sum()
    assert h["pixel_accuracy"] == pytest.approx((CAR1.sum() + PERSON.sum()) / (20 * 24))
    assert h["per_class"]["background"]["fn"] == n_bg


# ---------------------------------------------------------------------------------------------
# Sanity: an output scored against its own coco.json gets 100 in every protocol.
def _blocks(h: int, w: int, n: int, seed: int) -> np.ndarray:
    """A label map of ``n`` irregular regions (nearest of ``n`` random centres)."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 1, (n, 2)) * [h, w]
    yy, xx = np.mgrid[0:h, 0:w]
    d = (yy[..., None] - centres[:, 0]) ** 2 + (xx[..., None] - centres[:, 1]) ** 2
    return d.argmin(-1)


def _summary_numbers(entry: dict) -> list[float]:
    # AR1 and AR10 cap the detections per image below the number of segments: not a score
    skip = {"description", "per_class", "assignment", "class_agnostic", "AR1", "AR10"}
    return [v for k, v in entry.items() if k not in skip and not k.startswith("n_")]


def test_eval_own_coco_is_perfect_diffseg(tmp_path):
    # DiffSeg-like: every pixel in exactly one segment, many segments of one category per image
    images = [
        FixtureImage(f"img{i}", rgb(30, 40, i), segments_from_label_map(_blocks(30, 40, n, i)))
        for i, n in enumerate([7, 12, 3])
    ]
    write_output(str(tmp_path), images, [{"id": 1, "name": "segment"}])
    out = str(tmp_path / "out")
    assert run_cli(["eval", "--pred", out, "--gt", out + "/coco.json", "--protocol", "all"]) == 0
    report = json.loads((tmp_path / "out" / "eval" / "eval.json").read_text())
    assert report["prediction_kind"] == "segments"
    assert list(report["protocols"]) == ["hungarian", "coco-ap"]
    h = report["protocols"]["hungarian"]
    assert h["mIoU"] == pytest.approx(1.0) and h["pixel_accuracy"] == pytest.approx(1.0)
    assert h["per_class"]["segment"]["tp"] == 3 * 30 * 40
    ap = report["protocols"]["coco-ap"]
    assert ap["n_results"] == 22
    for value in _summary_numbers(ap):
        assert value is None or value == pytest.approx(1.0)
    for row in report["per_image"]:
        assert row["hungarian_mIoU"] == pytest.approx(1.0)
    # the dataset-level matching has no meaning for segments against instances: refused by name
    assert (
        run_cli(
            ["eval", "--pred", out, "--gt", out + "/coco.json", "--protocol", "hungarian-dataset"]
        )
        == 2
    )


def test_eval_own_coco_is_perfect_slime(tmp_path):
    # SLiMe-like: one annotation per class present, background unannotated
    cats = [{"id": 1, "name": "body"}, {"id": 2, "name": "wheel"}, {"id": 3, "name": "window"}]
    images = []
    for i in range(3):
        labels = _blocks(30, 40, 6, 10 + i) % 4  # 0 = background, 1..3 classes (split regions)
        images.append(
            FixtureImage(
                f"car{i}", rgb(30, 40, i), classes_from_label_map(labels, {1: 1, 2: 2, 3: 3})
            )
        )
    write_output(str(tmp_path), images, cats)
    out = str(tmp_path / "out")
    assert run_cli(["eval", "--pred", out, "--gt", out + "/coco.json", "--protocol", "all"]) == 0
    report = json.loads((tmp_path / "out" / "eval" / "eval.json").read_text())
    assert report["prediction_kind"] == "classes"
    assert list(report["protocols"]) == [
        "miou",
        "slime",
        "hungarian",
        "hungarian-dataset",
        "coco-ap",
    ]
    for name, entry in report["protocols"].items():
        numbers = _summary_numbers(entry)
        assert numbers, name
        for value in numbers:
            assert value is None or value == pytest.approx(1.0), (name, entry)


# ---------------------------------------------------------------------------------------------
# Predictions that are not a run's output: the documented layout without run/, plain COCO files.


def test_eval_takes_a_folder_in_the_output_layout_without_the_run_folder(tmp_path):
    out, gt = build_slime_case(str(tmp_path))
    copied = tmp_path / "copied"
    copied.mkdir()
    for name in ("coco.json", "images.parquet"):
        (copied / name).write_bytes((tmp_path / "out" / name).read_bytes())
    assert run_cli(["eval", "--pred", str(copied), "--gt", gt, "--no-files",
                    "--protocol", "miou,slime"]) == 0
    assert run_cli(["eval", "--pred", out, "--gt", gt, "--out", str(tmp_path / "e1"),
                    "--protocol", "miou,slime"]) == 0
    report_of_run = read_json(str(tmp_path / "e1" / "eval.json"))
    assert run_cli(["eval", "--pred", str(copied), "--gt", gt, "--out", str(tmp_path / "e2"),
                    "--protocol", "miou,slime"]) == 0
    report_of_copy = read_json(str(tmp_path / "e2" / "eval.json"))
    check_slime_numbers(report_of_copy)
    assert report_of_copy["protocols"] == report_of_run["protocols"]


def test_eval_takes_a_coco_instances_file(tmp_path):
    _, gt = build_slime_case(str(tmp_path))
    plain = tmp_path / "predictions.json"
    plain.write_bytes((tmp_path / "out" / "coco.json").read_bytes())
    assert run_cli(["eval", "--pred", str(plain), "--gt", gt, "--out", str(tmp_path / "e"),
                    "--protocol", "miou,slime"]) == 0
    check_slime_numbers(read_json(str(tmp_path / "e" / "eval.json")))


def test_eval_takes_a_coco_results_file_against_coco_ground_truth(tmp_path, capsys):
    images = [FixtureImage(f"img{i}", rgb(30, 40, i), segments_from_label_map(_blocks(30, 40, 5, i)))
              for i in range(2)]
    write_output(str(tmp_path), images, [{"id": 1, "name": "segment"}])
    gt = tmp_path / "out" / "coco.json"
    coco = json.loads(gt.read_text())
    results = [{"image_id": a["image_id"], "category_id": a["category_id"],
                "segmentation": a["segmentation"], "score": 0.9} for a in coco["annotations"]]
    results_file = tmp_path / "results.json"
    results_file.write_text(json.dumps(results))
    assert run_cli(["eval", "--pred", str(results_file), "--gt", str(gt),
                    "--out", str(tmp_path / "e"), "--protocol", "coco-ap"]) == 0
    ap = read_json(str(tmp_path / "e" / "eval.json"))["protocols"]["coco-ap"]
    assert ap["n_results"] == len(results)
    assert ap["AP"] == pytest.approx(1.0)
    # a results file names ground-truth ids: label-map ground truth has none
    write_label_maps(str(tmp_path / "maps"), {"img0": np.zeros((30, 40), np.uint8)}, ["background"])
    assert run_cli(["eval", "--pred", str(results_file), "--gt", str(tmp_path / "maps"),
                    "--no-files"]) == 2
    assert "--gt must be a COCO instances .json" in capsys.readouterr().err


def test_eval_names_what_it_looked_for_in_a_folder_that_is_no_output(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    write_label_maps(str(tmp_path / "gt"), {"a": np.zeros((2, 4), np.uint8)}, ["background"])
    assert run_cli(["eval", "--pred", str(tmp_path / "empty"), "--gt", str(tmp_path / "gt"),
                    "--no-files"]) == 2
    err = capsys.readouterr().err
    assert "neither a labeler output" in err and "merge it again" not in err
