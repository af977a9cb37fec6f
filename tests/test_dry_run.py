"""``labeler run --dry-run``: checks, counts and one timed image; the output is never written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from labeler.cli import main
from tests.helpers import flat_regions_image


def _photos(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True)
    for index in range(count):
        image, _ = flat_regions_image(64, 96, "quadrants")
        Image.fromarray(np.roll(image, index * 7, axis=1)).save(folder / f"p{index}.png")
    return folder


def test_dry_run_counts_times_one_image_and_writes_nothing(tmp_path, capsys):
    photos = _photos(tmp_path / "photos", 5)
    output = tmp_path / "out"
    code = main(["run", "--model", "tiny", "--input", str(photos), "--output", str(output),
                 "--shard-size", "2", "--dry-run"])
    assert code == 0
    text = capsys.readouterr().out
    assert "5 images in 3 shards of 2" in text
    assert f"output {output}: new" in text
    assert "one image (" in text and " s on this device" in text
    assert not output.exists()


def test_dry_run_on_an_output_with_other_settings_lists_them(tmp_path, capsys):
    photos = _photos(tmp_path / "photos", 1)
    output = tmp_path / "out"
    (output / "run").mkdir(parents=True)
    recorded = {"fingerprint": "0" * 16, "settings": {"seed": 7}}
    (output / "run" / "config.json").write_text(json.dumps(recorded))
    before = sorted(path.name for path in output.rglob("*"))
    code = main(["run", "--model", "tiny", "--input", str(photos), "--output", str(output),
                 "--dry-run"])
    assert code == 0
    text = capsys.readouterr().out
    assert "holds a run with other settings" in text and "seed: 7 -> 0" in text
    assert sorted(path.name for path in output.rglob("*")) == before


def test_dry_run_refuses_bad_settings_like_a_run(tmp_path, capsys):
    photos = _photos(tmp_path / "photos", 1)
    code = main(["run", "--model", str(tmp_path / "nothing-here"), "--input", str(photos),
                 "--output", str(tmp_path / "out"), "--dry-run"])
    assert code == 2
    assert "--model" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
