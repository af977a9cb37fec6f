"""`labeler run` end to end on a local folder: every image accounted for, valid COCO, resume."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from labeler.cli import main
from tests.helpers import flat_regions_image


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    (folder / "sub dir").mkdir()
    image, _ = flat_regions_image(96, 128, "quadrants")
    Image.fromarray(image).save(folder / "a.jpg", quality=95)
    Image.fromarray(image[:, :64]).save(folder / "sub dir" / "b.PNG")
    Image.fromarray(image).convert("L").save(folder / "c.webp")
    Image.fromarray(image[:80, :40]).save(folder / "sub dir" / "ü.bmp")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    (folder / "notes.txt").write_text("not an image and not listed")
    (folder / "empty.jpg").write_bytes(b"")
    return folder


def run_cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["run", *args, "--executor", "local", "--no-progress"])
    return code, out.getvalue()


@pytest.fixture(scope="module")
def labeled_output(photo_folder, tmp_path_factory):
    output = tmp_path_factory.mktemp("out") / "labels"
    code, text = run_cli(
        "--method",
        "diffseg",
        "--model",
        "tiny",
        "--input",
        str(photo_folder),
        "--output",
        str(output),
        "--shard-size",
        "3",
        "--batch-size",
        "2",
    )
    return output, code, text


def test_every_image_is_accounted_for_exactly_once(labeled_output, photo_folder):
    output, code, text = labeled_output
    assert code == 0, text
    rows = pq.read_table(output / "images.parquet").to_pylist()
    listed = sorted(p for p in photo_folder.rglob("*") if p.is_file() and p.suffix != ".txt")
    assert sorted(row["uri"] for row in rows) == sorted(str(p) for p in listed)
    by_name = {row["uri"].rsplit("/", 1)[-1]: row for row in rows}
    assert (
        by_name["empty.jpg"]["status"] == "failed"
        and by_name["empty.jpg"]["reason"] == "empty_file"
    )
    assert by_name["broken.png"]["status"] == "failed" and by_name["broken.png"]["reason"]
    for name, (width, height) in {
        "a.jpg": (128, 96),
        "b.PNG": (64, 96),
        "c.webp": (128, 96),
        "ü.bmp": (40, 80),
    }.items():
        row = by_name[name]
        assert (row["status"], row["width"], row["height"]) == ("labeled", width, height)
        assert row["n_annotations"] >= 1
    assert "6 images: 4 labeled, 2 failed" in text


def test_coco_file_is_valid_and_masks_tile_each_image(labeled_output):
    output, _, _ = labeled_output
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(output / "coco.json"))
    assert len(coco.getImgIds()) == 4
    assert coco.loadCats(coco.getCatIds()) == [
        {"id": 1, "name": "segment", "supercategory": "segment"}
    ]
    for image in coco.loadImgs(coco.getImgIds()):
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
        coverage = np.zeros((image["height"], image["width"]), np.int32)
        for annotation in annotations:
            assert isinstance(annotation["segmentation"]["counts"], str)
            assert annotation["iscrowd"] == 0 and 0 < annotation["score"] <= 1
            mask = mask_utils.decode(annotation["segmentation"])
            assert mask.shape == (image["height"], image["width"])
            assert annotation["area"] == mask.sum()
            coverage += mask
        np.testing.assert_array_equal(coverage, 1)  # DiffSeg segments partition the image
    ids = [a["id"] for a in coco.dataset["annotations"]]
    assert len(ids) == len(set(ids))


def test_rerun_resumes_without_work_and_same_output(labeled_output, photo_folder):
    output, _, _ = labeled_output
    before = (output / "coco.json").read_bytes()
    code, text = run_cli(
        "--method",
        "diffseg",
        "--model",
        "tiny",
        "--input",
        str(photo_folder),
        "--output",
        str(output),
        "--shard-size",
        "3",
        "--batch-size",
        "1",
    )
    assert code == 0 and "0 of 2 shards processed" in text
    after = json.loads((output / "coco.json").read_bytes())
    assert after["annotations"] == json.loads(before)["annotations"]


def test_changed_settings_on_existing_output_are_refused(labeled_output, photo_folder, capsys):
    output, _, _ = labeled_output
    code, _ = run_cli(
        "--method",
        "diffseg",
        "--model",
        "tiny",
        "--input",
        str(photo_folder),
        "--output",
        str(output),
        "--shard-size",
        "4",
    )
    assert code == 2
    assert "shard_size: 3 -> 4" in capsys.readouterr().err


def test_status_reports_the_finished_run(labeled_output, capsys):
    output, _, _ = labeled_output
    assert main(["status", str(output)]) == 0
    report = capsys.readouterr().out
    assert "complete" in report and "4 labeled, 2 failed" in report and "empty_file" in report


def test_missing_input_is_a_clear_error(tmp_path, capsys):
    code, _ = run_cli(
        "--model", "tiny", "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o")
    )
    assert code == 2
    assert "nope" in capsys.readouterr().err
