"""What a new user trips over: each test fails on the behaviour before its fix."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import labeler
from labeler.cli import main
from labeler.io.folders import Folder
from labeler.methods.annotations import load_annotated
from labeler.output.failures import MISSING_FILE, READ_ERROR, is_retryable, read_failure_reason
from labeler.runtime.progress import DriverProgress
from labeler.runtime.run_folder import RunFolder
from tests.helpers import flat_regions_image

REPO = Path(__file__).resolve().parents[1]


def _photos(folder: Path, n: int = 1) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(n):
        image, _ = flat_regions_image(64, 64, "quadrants")
        Image.fromarray(image).save(folder / f"photo{index}.png")
    return folder


def test_output_inside_the_input_folder_is_refused_and_nothing_is_written(tmp_path, capsys):
    photos = _photos(tmp_path / "photos")
    for output in (photos / "labels", photos):
        code = main(["run", "--method", "diffseg", "--model", "tiny", "--input", str(photos),
                     "--output", str(output)])
        assert code == 2
        assert "is inside --input" in capsys.readouterr().err
    assert sorted(p.name for p in photos.iterdir()) == ["photo0.png"]


def test_output_beside_a_manifest_is_fine_for_the_check(tmp_path):
    from labeler.runtime.preflight import check_output_outside_input

    manifest = tmp_path / "list.txt"
    manifest.write_text("a.png\n")
    check_output_outside_input(str(manifest), str(tmp_path / "out"))  # no error
    check_output_outside_input("s3://bucket/photos/", "s3://bucket/labels/photos")
    with pytest.raises(labeler.errors.UserError, match="inside --input"):
        check_output_outside_input("s3://bucket/photos/", "s3://bucket/photos/labels/")


def test_a_refused_run_on_an_empty_input_writes_nothing(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    output = tmp_path / "out"
    code = main(["run", "--method", "diffseg", "--model", "tiny", "--input", str(empty),
                 "--output", str(output)])
    assert code == 2
    assert "is empty" in capsys.readouterr().err
    assert not output.exists()


@pytest.mark.parametrize("table", ['kl_threshold = "0.9"', "iterations = \"3\"",
                                   "kl_threshold = true"])
def test_job_file_values_are_not_coerced(tmp_path, capsys, table):
    job = tmp_path / "job.toml"
    job.write_text(f"[diffseg]\n{table}\n")
    photos = _photos(tmp_path / "photos")
    code = main(["run", str(job), "--model", "tiny", "--input", str(photos),
                 "--output", str(tmp_path / "out"), "--dry-run"])
    assert code == 2
    err = capsys.readouterr().err
    assert "[diffseg]" in err and "must be" in err
    assert not (tmp_path / "out").exists()


def test_a_missing_local_file_is_a_permanent_failure_and_a_missing_object_is_not():
    missing = FileNotFoundError(2, "No such file or directory")
    assert read_failure_reason(missing, "/data/photos/gone.jpg") == MISSING_FILE
    assert read_failure_reason(missing, "file:///data/photos/gone.jpg") == MISSING_FILE
    assert not is_retryable(MISSING_FILE)
    assert read_failure_reason(missing, "s3://bucket/not-there-yet.jpg") == READ_ERROR
    assert read_failure_reason(TimeoutError("slow"), "/data/photos/a.jpg") == READ_ERROR
    assert is_retryable(READ_ERROR)


def test_a_relative_path_that_is_not_found_names_the_rule(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    job = tmp_path / "jobs" / "job.toml"
    job.parent.mkdir()
    job.write_text('input = "photos"\noutput = "out"\nmodel = "tiny"\n')
    _photos(tmp_path / "jobs" / "photos")  # beside the job file, not under the current folder
    assert main(["run", str(job)]) == 2
    err = capsys.readouterr().err
    assert "input not found: photos" in err
    assert f"relative paths resolve against the current folder, {os.getcwd()}" in err
    assert not (tmp_path / "out").exists()


def _annotated(folder: Path, mask_name: str, values: np.ndarray) -> tuple[Path, Path]:
    images, masks = folder / "images", folder / "masks"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    Image.new("RGB", values.shape[::-1], "red").save(images / "car.png")
    Image.fromarray(values.astype(np.uint8)).save(masks / mask_name)
    return images, masks


def test_a_jpeg_mask_is_refused_by_name(tmp_path):
    images, masks = _annotated(tmp_path, "car.jpg", np.zeros((16, 16)))
    with pytest.raises(ValueError, match="mask car.jpg is lossy"):
        load_annotated(str(images), str(masks), num_classes=2)


def test_mask_values_past_the_classes_say_that_class_0_is_background(tmp_path):
    values = np.zeros((16, 16))
    values[8:] = 2
    images, masks = _annotated(tmp_path, "car.png", values)
    with pytest.raises(ValueError, match="class 0 is background"):
        load_annotated(str(images), str(masks), num_classes=2)


def test_label_many_records_a_bad_input_and_goes_on(tmp_path):
    good = _photos(tmp_path / "photos") / "photo0.png"
    text = tmp_path / "LICENSE.md"
    text.write_text("not an image\n")
    segmenter = labeler.Labeler(method="diffseg", model="tiny", batch_size=2)
    results = list(segmenter.label_many([str(good), str(text), str(tmp_path / "gone.png"),
                                         np.zeros((4, 4), np.float32), Image.open(good)]))
    assert [r.reason for r in results] == [None, "not_an_image", MISSING_FILE, "invalid_array",
                                           None]
    assert not results[0].failed and results[1].failed and results[1].detail
    assert results[1].masks.shape[0] == 0 and results[1].to_coco() == []
    assert np.array_equal(results[0].masks, results[4].masks) and results[0].masks.shape[0] >= 1
    with pytest.raises(ValueError):
        list(segmenter.label_many([str(good), str(text)], errors="raise"))
    with pytest.raises(ValueError, match="not_an_image"):
        segmenter.label(str(text))


class _Terminal(StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_without_a_terminal_is_plain_lines_not_redraws(tmp_path, caplog):
    run = RunFolder(Folder(str(tmp_path / "out")))
    pending = [{"shard_id": "s0", "n_images": 4}, {"shard_id": "s1", "n_images": 4}]
    stream = StringIO()
    with caplog.at_level(logging.INFO, logger="labeler.runtime.progress"):
        progress = DriverProgress(run, 8, pending, enabled=True, stream=stream)
        for _ in range(5):
            progress.tick(1, 1)
        progress.shard_done("s0", {"images": 4, "failed": 1})
        progress.shard_done("s1", {"images": 4, "failed": 0})  # the last one: always a line
        progress.close("complete")
    assert stream.getvalue() == ""  # no bar, no carriage returns
    lines = [r.getMessage() for r in caplog.records if r.name == "labeler.runtime.progress"]
    assert lines[0].startswith("labeled 4 of 8 images (50%)") and lines[0].endswith("1 failed")
    assert lines[-1].startswith("labeled 8 of 8 images (100%)")

    terminal = _Terminal()
    progress = DriverProgress(run, 8, pending, enabled=True, stream=terminal)
    progress.shard_done("s0", {"images": 4, "failed": 0})
    progress.close("complete")
    assert "\r" in terminal.getvalue() and "4/8" in terminal.getvalue()


@pytest.mark.parametrize("command", [
    ["slime", "fit", "--classes", "background,red", "--output", "{out}/set.safetensors",
     "--model", "tiny"],
    ["diffews", "train", "--classes", "background,red", "--output", "{out}/trained",
     "--model", "tiny"],
    ["run", "--method", "diffews", "--classes", "background,red", "--model", "{out}/ckpt",
     "--input", "{images}", "--output", "{out}/run"],
])
def test_a_bad_mask_is_refused_before_torch_is_imported(tmp_path, command):
    values = np.zeros((16, 16))
    values[8:] = 2  # a value past the two classes
    images, masks = _annotated(tmp_path, "car.png", values)
    flags = {"slime": ["--images", str(images), "--masks", str(masks)],
             "diffews": ["--images", str(images), "--masks", str(masks)],
             "run": ["--support-images", str(images), "--support-masks", str(masks)]}[command[0]]
    argv = [part.format(out=tmp_path, images=images) for part in command] + flags
    (tmp_path / "ckpt").mkdir()  # found by the model lookup; its support conv is checked later
    (tmp_path / "ckpt" / "model_index.json").write_text("{}")
    script = ("import sys\nfrom labeler.cli import main\n"
              f"code = main({argv!r})\nprint(code, 'torch' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300, check=False, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.stdout.split() == ["2", "False"], result.stderr[-2000:]
    assert "class 0 is background" in result.stderr
