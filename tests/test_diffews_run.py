"""`labeler run --method diffews` end to end on the tiny model: accounting, COCO, refusals."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from tests.diffews_helpers import image_rows, run_cli, support_folder, tiny_checkpoint
from tests.helpers import flat_regions_image


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("diffews_run")
    photos = root / "photos"
    photos.mkdir()
    image, _ = flat_regions_image(96, 128, "quadrants")
    Image.fromarray(image).save(photos / "a.png")
    Image.fromarray(image[:, :64]).save(photos / "b.jpg", quality=95)
    Image.fromarray(image[:80, :40]).save(photos / "c.png")
    (photos / "empty.jpg").write_bytes(b"")
    return {"checkpoint": tiny_checkpoint(root / "ckpt"), "support": support_folder(root / "support"),
            "photos": photos, "root": root}


def test_job_file_run_labels_every_image_with_the_support_classes(world):
    output = world["root"] / "out"
    job = world["root"] / "job.toml"
    job.write_text(
        f'method = "diffews"\nmodel = "{world["checkpoint"]}"\n'
        f'support_images = "{world["support"]}"\nsupport_masks = "{world["support"]}"\n'
        f'classes = "background,red,green"\ninput = "{world["photos"]}"\noutput = "{output}"\n'
        'shard_size = 2\nbatch_size = 2\n[diffews]\nrule = "relative"\n'
    )
    code, text = run_cli(str(job))
    assert code == 0, text
    rows = image_rows(output)
    assert sorted(rows) == ["a.png", "b.jpg", "c.png", "empty.jpg"]
    assert rows["empty.jpg"]["status"] == "failed" and rows["empty.jpg"]["reason"] == "empty_file"
    for name in ("a.png", "b.jpg", "c.png"):
        assert rows[name]["status"] == "labeled"
        assert rows[name]["n_annotations"] >= 1  # the relative rule always marks something
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(output / "coco.json"))
    assert coco.loadCats(coco.getCatIds()) == [
        {"id": 1, "name": "red", "supercategory": "diffews"},
        {"id": 2, "name": "green", "supercategory": "diffews"},
    ]
    for image in coco.loadImgs(coco.getImgIds()):
        coverage = np.zeros((image["height"], image["width"]), np.int32)
        for annotation in coco.loadAnns(coco.getAnnIds(imgIds=image["id"])):
            mask = mask_utils.decode(annotation["segmentation"])
            assert mask.shape == (image["height"], image["width"]) and annotation["area"] == mask.sum()
            assert annotation["category_id"] in (1, 2) and 0 < annotation["score"] <= 1
            coverage += mask
        assert coverage.max() <= 1  # one class per pixel
    provenance = pq.read_table(output / "annotations").to_pylist()[0]
    assert provenance["method"] == "diffews" and provenance["resource_digest"]


def test_flags_run_and_changed_support_is_refused_on_resume(world, tmp_path, capsys):
    output = tmp_path / "out"
    flags = ["--method", "diffews", "--model", str(world["checkpoint"]), "--support-images",
             str(world["support"]), "--support-masks", str(world["support"]), "--classes",
             "background,red,green", "--input", str(world["photos"] / "a.png"), "--output", str(output)]
    code, text = run_cli(*flags)
    assert code == 0, text
    np.save(world["support"] / "two.npy", np.zeros((96, 128), np.int64) + 1)  # content changed
    try:
        code, _ = run_cli(*flags)
        assert code == 2 and "support_digest" in capsys.readouterr().err
    finally:
        support_folder(world["support"])


@pytest.mark.parametrize(
    "change, message",
    [
        ({"--model": "tiny"}, "conv_in_ref"),
        ({"--classes": "background"}, "at least two"),
        ({"--classes": "background,red,green,blue"}, "'blue'"),
        ({"--support-masks": "/nonexistent/masks"}, "does not exist"),
    ],
)
def test_user_mistakes_exit_2_before_anything_is_written(world, tmp_path, capsys, change, message):
    values = {"--method": "diffews", "--model": str(world["checkpoint"]),
              "--support-images": str(world["support"]), "--support-masks": str(world["support"]),
              "--classes": "background,red,green", "--input": str(world["photos"]),
              "--output": str(tmp_path / "out"), **change}
    code, _ = run_cli(*[item for pair in values.items() for item in pair])
    assert code == 2
    error = capsys.readouterr().err
    assert message in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
