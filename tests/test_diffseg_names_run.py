"""`labeler run --names` end to end: named categories and name scores in coco.json, the Parquet
annotations and an export."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pyarrow.parquet as pq
from PIL import Image
from pycocotools.coco import COCO

from labeler.cli import main
from labeler.models.tiny.names import COLOUR_NAMES
from labeler.testing.worlds import colour_world


def _cli(*args: str) -> int:
    with contextlib.redirect_stdout(io.StringIO()):
        return main(list(args))


def test_a_named_run_writes_names_everywhere(tmp_path, labeler_cache):
    photos = tmp_path / "photos"
    photos.mkdir()
    image, colour = colour_world(np.random.default_rng(3), np.array(list(COLOUR_NAMES.values())), 128)
    Image.fromarray(image).save(photos / "a.png")
    output = tmp_path / "out"
    vocabulary = ",".join(COLOUR_NAMES)
    assert _cli("run", "--method", "diffseg", "--model", "tiny", "--names", vocabulary,
                "--executor", "local", "--input", str(photos), "--output", str(output),
                "--no-progress") == 0

    coco = COCO(str(output / "coco.json"))
    names = [coco.cats[i]["name"] for i in sorted(coco.cats)]
    assert names == [*COLOUR_NAMES, "segment"]
    annotations = coco.loadAnns(coco.getAnnIds())
    assert annotations and all(0 <= a["name_score"] <= 1 for a in annotations)
    assert {coco.cats[a["category_id"]]["name"] for a in annotations} & set(COLOUR_NAMES)

    rows = pq.read_table(output / "annotations").to_pylist()
    assert sorted(r["name_score"] for r in rows) == sorted(a["name_score"] for a in annotations)
    assert {r["category_name"] for r in rows} == {coco.cats[a["category_id"]]["name"] for a in annotations}

    export = tmp_path / "studio"
    assert _cli("export", str(output), "--format", "label-studio", "--out", str(export)) == 0
    tasks = json.loads((export / "tasks.json").read_text())
    labels = {label for task in tasks for prediction in task["predictions"]
              for result in prediction["result"] for label in result["value"]["polygonlabels"]}
    assert labels and labels <= {*COLOUR_NAMES, "segment"}
    config = (export / "labeling_config.xml").read_text()
    assert all(f'value="{name}"' in config for name in COLOUR_NAMES)

    # labeler eval picks the semantic protocols and matches the names to the classes by name
    truth = tmp_path / "truth"
    truth.mkdir()
    Image.fromarray((colour + 1).astype(np.uint8)).save(truth / "a.png")
    (truth / "classes.txt").write_text("\n".join(["background", *COLOUR_NAMES]) + "\n")
    assert _cli("eval", "--pred", str(output), "--gt", str(truth)) == 0
    report = json.loads((output / "eval" / "eval.json").read_text())
    assert list(report["protocols"]) == ["miou", "slime"]
    assert report["class_mapping"]["categories"] == {name: name for name in COLOUR_NAMES}
    assert report["class_mapping"]["unnamed"] == ["segment"]
    miou = report["protocols"]["miou"]  # measured: 0.86, per colour 0.78-0.95 (boundaries)
    assert miou["mIoU"] >= 0.75, miou
    assert all(c["iou"] >= 0.7 for c in miou["per_class"].values() if c["gt_pixels"]), miou
