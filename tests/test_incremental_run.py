"""Re-running `labeler run` after the input folder changed: new images labeled, old ones kept."""

from __future__ import annotations

import contextlib
import io
import json
import logging

import pyarrow.parquet as pq
from PIL import Image

from labeler.cli import main
from tests.helpers import flat_regions_image


def run_cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["run", *args, "--executor", "local", "--no-progress"])
    return code, out.getvalue()


def _save(folder, name: str, width: int) -> None:
    image, _ = flat_regions_image(64, width, "quadrants")
    Image.fromarray(image).save(folder / name)


def _shard_files(output) -> dict[str, bytes]:
    """Every committed part, stats file and manifest of the run, by relative path."""
    run = output / "run"
    paths = [*run.glob("shards/*/*"), *run.glob("stats/*"), *run.glob("manifest/*")]
    return {str(p.relative_to(output)): p.read_bytes() for p in paths}


def test_added_images_are_labeled_and_old_ones_untouched(tmp_path, caplog):
    photos = tmp_path / "photos"
    photos.mkdir()
    for index, name in enumerate(["a.png", "c.png", "e.png", "g.png"]):
        _save(photos, name, 64 + 8 * index)
    output = tmp_path / "out"
    flags = ["--method", "diffseg", "--model", "tiny", "--input", str(photos), "--output",
             str(output), "--shard-size", "2", "--batch-size", "2", "--workers", "1"]
    code, text = run_cli(*flags)
    assert code == 0, text
    before = _shard_files(output)
    old_plan = json.loads((output / "run" / "plan.json").read_text())
    old_ids = {row["uri"]: row["image_id"] for row in pq.read_table(output / "images.parquet").to_pylist()}

    for name in ["b.png", "d.png", "z.png"]:  # sorted among the old ones: ids still come after
        _save(photos, name, 72)
    (photos / "g.png").unlink()
    with caplog.at_level(logging.INFO, logger="labeler"):
        code, text = run_cli(*flags)
    assert code == 0, text
    assert "3 new images since the last run" in text
    assert "1 images are no longer in the input" in text
    assert "3 new images in the input" in caplog.text and str(photos / "g.png") in caplog.text

    plan = json.loads((output / "run" / "plan.json").read_text())
    assert plan["shards"][: len(old_plan["shards"])] == old_plan["shards"]
    new_shards = plan["shards"][len(old_plan["shards"]) :]
    assert [s["n_images"] for s in new_shards] == [2, 1] and plan["n_images"] == 7
    # the workers processed exactly the 3 new images
    stats = [json.loads((output / "run" / "stats" / f"{s['shard_id']}.json").read_text())
             for s in new_shards]
    assert sum(s["images"] for s in stats) == 3 and sum(s["labeled"] for s in stats) == 3
    # the old shards' parts, stats and manifests are byte-identical
    after = _shard_files(output)
    assert {path: after[path] for path in before} == before

    rows = pq.read_table(output / "images.parquet").to_pylist()
    ids = {row["uri"]: row["image_id"] for row in rows}
    assert {uri: ids[uri] for uri in old_ids} == old_ids  # removed g.png stays, ids stable
    assert [ids[str(photos / n)] for n in ["b.png", "d.png", "z.png"]] == [5, 6, 7]
    coco = json.loads((output / "coco.json").read_text())
    assert sorted(image["id"] for image in coco["images"]) == list(range(1, 8))
    labeled = {a["image_id"] for a in coco["annotations"]}
    assert labeled == set(range(1, 8))
