"""Image keys too long for a file system (issue 26): a 600-character key used to abort the
yolo-seg and label-maps exports ("file name too long"). Every format that names a file after an
image (its labels, its mask, the image placed with --images copy) now uses a stable short name,
and keeps the original in export.json's long_names and in its per-image records."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from labeler.output.exporters.export import FORMATS
from labeler.output.exporters.long_names import MAX_PART_BYTES, export_name, is_too_long
from tests._output_fixture import FixtureImage, write_output
from tests.consumers import export

LONG = "scene-" + "x" * 590 + "-end"  # one 600-character key part, as an object store allows
DEEP = "deep/" + "y" * 300  # a long last part under a folder
NAMES = ["short", LONG, DEEP]


def test_short_names_are_stable_distinct_and_fit_a_file_system():
    long_file, deep_file = f"{LONG}.png", f"{DEEP}.png"
    assert export_name("cats/a.jpg") == "cats/a.jpg" and not is_too_long("cats/a.jpg")
    assert export_name(long_file) == export_name(long_file) != export_name(deep_file)
    for name in (long_file, deep_file, "z" * 2000, "a/" * 600 + "b.png", "é" * 150 + ".jpg"):
        short = export_name(name)
        assert "/" not in short and len(short.encode()) <= MAX_PART_BYTES
        assert not is_too_long(short)
    assert export_name(long_file).endswith("x-end.png")
    assert export_name("q" * 300 + ".weird ext!").endswith("_ext")  # an unsafe extension is not kept


@pytest.fixture(scope="module")
def output():
    """A finished output (in memory: no local file could hold the key) with a short and two
    too-long image names."""
    root = f"memory://long-names-{uuid.uuid4().hex[:8]}"
    mask = np.zeros((12, 16), bool)
    mask[2:8, 3:12] = True
    images = [FixtureImage(name, np.full((12, 16, 3), 90, np.uint8), [(1, mask, 0.8)])
              for name in NAMES]
    write_output(root, images, [{"id": 1, "name": "cat"}], relative_names=True)
    return f"{root}/out"


def placed(fmt: str, images: str) -> bool:
    """Whether this format and --images mode write a file named after each image."""
    return FORMATS[fmt].names_files or (images != "none" and FORMATS[fmt].images_subdir is not None)


@pytest.mark.parametrize("images", ["none", "copy"])
@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_format_exports_every_image_whatever_the_length_of_its_name(output, tmp_path, fmt,
                                                                          images):
    out = tmp_path / "export"
    code, text = export(output, fmt, out, "--images", images)
    assert code == 0, text
    record = json.loads((out / "export.json").read_text())
    assert record["images"] == len(NAMES) and record["image_failures"] == {}
    originals = {f"{name}.png" for name in (LONG, DEEP)}
    expected = {export_name(name): name for name in originals} if placed(fmt, images) else {}
    assert record["long_names"] == expected
    if expected:
        assert "names too long for a file system were shortened" in text
    for path in out.rglob("*"):
        assert len(path.name.encode()) <= MAX_PART_BYTES + 8, path.name
    files = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    if images == "copy" and FORMATS[fmt].images_subdir is not None:
        folder = "images/train" if fmt == "yolo-seg" else FORMATS[fmt].images_subdir
        assert {f"{folder}/{export_name(n + '.png')}" for n in NAMES} <= files
    check_format_records(fmt, out, files, expected)


def check_format_records(fmt: str, out: Path, files: set[str], shortened: dict[str, str]) -> None:
    """Each format's own files name the short name and keep the original where it can."""
    stem = {name: (export_name(f"{name}.png") if shortened else f"{name}.png")[:-4] for name in NAMES}
    if fmt == "yolo-seg":
        assert {f"labels/train/{stem[name]}.txt" for name in NAMES} <= files
    elif fmt == "label-maps":
        assert {f"masks/{stem[name]}.png" for name in NAMES} <= files
    elif fmt in ("coco-rle", "coco-polygons", "cvat", "fiftyone"):
        records = json.loads((out / FORMATS[fmt].annotations_file).read_text())["images"]
        assert {r["file_name"]: r.get("original_file_name") for r in records} == {
            f"{stem[name]}.png": shortened.get(f"{stem[name]}.png") for name in NAMES}
    elif fmt.startswith("label-studio"):
        tasks = json.loads((out / "tasks.json").read_text())
        assert {t["data"]["file_name"]: t["data"].get("original_file_name") for t in tasks} == {
            f"{stem[name]}.png": shortened.get(f"{stem[name]}.png") for name in NAMES}
    elif fmt == "hf":  # names are strings in rows: never shortened
        rows = pq.read_table(next(out.rglob("*.parquet"))).to_pylist()
        assert {row["file_name"] for row in rows} == {f"{name}.png" for name in NAMES}
    elif fmt == "cvat-images":
        text = (out / "annotations.xml").read_text()
        for name in NAMES:
            assert f'name="{stem[name]}.png"' in text
