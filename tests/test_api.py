"""The Python API: `labeler.Labeler` in a fresh interpreter without Ray, decoding as a run does,
and `labeler.run`."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

import labeler
from labeler.cli import main
from tests.helpers import flat_regions_image

REPO = Path(__file__).resolve().parents[1]


def test_labeler_in_a_fresh_interpreter_starts_no_ray(tmp_path):
    image, _ = flat_regions_image(96, 128, "quadrants")
    Image.fromarray(image).save(tmp_path / "photo.png")
    script = textwrap.dedent(
        f"""
        import json, sys
        import numpy as np
        from PIL import Image
        import labeler

        segmenter = labeler.Labeler(method="diffseg", model="tiny", kl_threshold=0.7)
        pil = Image.open({str(tmp_path / "photo.png")!r})
        results = [segmenter.label(pil), segmenter.label(np.asarray(pil)),
                   segmenter.label({str(tmp_path / "photo.png")!r})]
        many = list(segmenter.label_many([pil] * 3))
        first = results[0]
        print(json.dumps({{
            "ray": "ray" in sys.modules,
            "shapes": [list(r.masks.shape) for r in results + many],
            "same": all(np.array_equal(r.masks, first.masks) for r in results + many),
            "dtype": str(first.masks.dtype),
            "tiles": bool((first.masks.sum(0) == 1).all()),
            "categories": first.category_names,
            "scores": first.scores.tolist(),
            "coco": first.to_coco(image_id=7),
        }}))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["ray"] is False
    n = report["shapes"][0][0]
    assert n >= 1 and all(shape == [n, 96, 128] for shape in report["shapes"])
    assert report["same"] and report["dtype"] == "bool" and report["tiles"]
    assert report["categories"] == ["segment"] * n
    assert all(0.0 <= s <= 1.0 for s in report["scores"])
    coco = report["coco"]
    assert [a["id"] for a in coco] == [7 * 4096 + i for i in range(n)]
    decoded = [mask_utils.decode({**a["segmentation"], "counts": a["segmentation"]["counts"]})
               for a in coco]
    assert sum(int(m.sum()) for m in decoded) == 96 * 128
    assert all(a["area"] == int(m.sum()) for a, m in zip(coco, decoded, strict=True))


def test_labeler_refuses_bad_settings_and_inputs():
    with pytest.raises(ValueError, match="kl_treshold"):
        labeler.Labeler(method="diffseg", model="tiny", kl_treshold=0.7)
    segmenter = labeler.Labeler(method="diffseg", model="tiny")
    with pytest.raises(ValueError, match="uint8"):
        segmenter.label(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(TypeError, match="PIL image"):
        segmenter.label(42)


def test_run_returns_the_summary(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    image, _ = flat_regions_image(64, 64, "halves")
    Image.fromarray(image).save(photos / "one.png")
    summary = labeler.run({"method": "diffseg", "model": "tiny", "input": str(photos),
                           "output": str(tmp_path / "out"), "workers": 1}, executor="local")
    assert summary.complete and summary.images == 1 and summary.labeled == 1
    assert json.loads((tmp_path / "out" / "coco.json").read_text())["images"][0]["file_name"] == "one.png"


def _photo(height: int, width: int, layout: str, fmt: str) -> bytes:
    """Flat regions with some texture, encoded as ``fmt``."""
    image, _ = flat_regions_image(height, width, layout)
    noise = np.random.default_rng(height * width).integers(0, 24, image.shape, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image // 2 + noise).save(buffer, fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(("draft_decode", "scale"), [(True, 2), (False, 1)])
def test_the_api_labels_paths_as_a_run_does(tmp_path, labeler_cache, draft_decode, scale):
    """The same image through `labeler run --executor local` and `Labeler.label_many`: the same
    annotations, at the stored size, and the same decode scale (tiny's input side is 512, so
    the 1100x1040 JPEG is decoded at 550x520 by its DCT scaling; other formats go through the
    same decoder call, box-reduced: tests/test_draft_decode.py). Labels are made at 64 px
    (``max_label_side``), which keeps the test cheap."""
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "big.jpg").write_bytes(_photo(1040, 1100, "quadrants", "JPEG"))
    output = tmp_path / "out"
    job = tmp_path / "job.toml"
    job.write_text("[diffseg]\nmax_label_side = 64\n")
    flags = [] if draft_decode else ["--no-draft-decode"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["run", str(job), "--method", "diffseg", "--model", "tiny", "--executor",
                     "local", "--input", str(photos), "--output", str(output), "--no-progress",
                     *flags]) == 0
    coco = json.loads((output / "coco.json").read_text())
    (image,) = coco["images"]
    (row,) = pq.read_table(output / "images.parquet").to_pylist()

    segmenter = labeler.Labeler(method="diffseg", model="tiny", draft_decode=draft_decode,
                                max_label_side=64)
    (result,) = segmenter.label_many([photos / "big.jpg"])
    assert coco["annotations"] and result.to_coco(image["id"]) == coco["annotations"]
    assert result.masks.shape[1:] == (1040, 1100) == (image["height"], image["width"])
    assert result.decode_scale == row["decode_scale"] == scale
    assert segmenter.pixels(photos / "big.jpg").shape == ((520, 550, 3) if draft_decode
                                                          else (1040, 1100, 3))
