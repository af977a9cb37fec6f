"""COCO files of any size and the exporter base: split by annotation count, each file loads in
pycocotools, exporters publish on a clean exit and leave nothing when the block raises."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from labeler.io.folders import Folder
from labeler.output.coco_files import COCO_INDEX, CocoFilesWriter, Fragment, coco_files
from labeler.output.coco_records import coco_image, label_map_annotations, render
from labeler.output.exporters import hf
from labeler.output.exporters.base import ExportContext, ExportOptions
from labeler.output.exporters.coco import CocoExporter
from labeler.output.exporters.cvat_images import CvatImagesExporter
from labeler.output.exporters.hf import HfExporter
from labeler.output.exporters.label_studio import LabelStudioExporter
from labeler.output.exporters.source import ExportImage

CATEGORIES = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]


def _image(image_id: int, n_labels: int, rng) -> tuple[ExportImage, list[dict]]:
    height, width = 12, 9
    label_map = rng.integers(-1, n_labels, (height, width))
    annotations = label_map_annotations(label_map, [1 + k % 2 for k in range(n_labels)],
                                        [0.5] * n_labels, image_id)
    return ExportImage(image_id, f"d/{image_id}.png", f"s3://b/d/{image_id}.png", width,
                       height), annotations


def _fragment(folder: Folder, name: str, images, position: int) -> Fragment:
    image_records = [coco_image(i.image_id, i.file_name, i.uri, i.width, i.height)
                     for i, _ in images]
    annotations = [a for _, found in images for a in found]
    folder.write_bytes(f"{name}.images", render(image_records))
    folder.write_bytes(f"{name}.annotations", render(annotations))
    return Fragment(folder, f"{name}.images", f"{name}.annotations", len(image_records),
                    len(annotations), position=position)


def test_fragments_split_into_complete_coco_files_that_load_in_pycocotools(tmp_path):
    rng = np.random.default_rng(0)
    out = Folder(str(tmp_path))
    shards = [[_image(10 * s + i, 3, rng) for i in range(4)] for s in range(5)]
    shards.insert(2, [])  # a shard with no labeled image
    writer = CocoFilesWriter(out, "coco.json", {"run_id": "r"}, CATEGORIES, max_annotations=25)
    for position, images in enumerate(shards):
        writer.add(_fragment(out, f"frag{position}", images, position))
    assert writer.close() == [COCO_INDEX]
    assert not (tmp_path / "coco.json").exists()
    index = json.loads((tmp_path / COCO_INDEX).read_text())
    files = coco_files(out, "coco.json")
    assert files == [f"coco/{entry['file']}" for entry in index["files"]]
    assert len(files) > 1
    loaded_annotations, loaded_images = [], []
    for path, entry in zip(files, index["files"], strict=True):
        coco = COCO(str(tmp_path / path))
        assert len(coco.getImgIds()) == entry["images"]
        assert len(coco.getAnnIds()) == entry["annotations"] <= 25
        assert coco.loadCats(coco.getCatIds()) == CATEGORIES
        for annotation in coco.loadAnns(coco.getAnnIds()):  # masks decode at the image's size
            image = coco.loadImgs(annotation["image_id"])[0]
            assert coco.annToMask(annotation).shape == (image["height"], image["width"])
        loaded_images += coco.getImgIds()
        loaded_annotations += coco.getAnnIds()
    expected = [a["id"] for images in shards for _, found in images for a in found]
    assert sorted(loaded_annotations) == sorted(expected)
    assert index["annotations"] == len(expected)
    assert index["images"] == len(loaded_images) == sum(len(images) for images in shards)
    starts = [entry["shards"][0] for entry in index["files"]]
    assert starts[0] == 0 and starts == sorted(starts)


def test_everything_under_the_bound_is_one_file_and_stale_parts_go(tmp_path):
    rng = np.random.default_rng(1)
    out = Folder(str(tmp_path))
    (tmp_path / "coco").mkdir()
    (tmp_path / "coco" / "part-00007.json").write_text("{}")
    writer = CocoFilesWriter(out, "coco.json", {}, CATEGORIES, max_annotations=1000)
    writer.add(_fragment(out, "only", [_image(1, 2, rng), _image(2, 0, rng)], 0))
    assert writer.close() == ["coco.json"]
    assert not (tmp_path / "coco").exists()
    coco = COCO(str(tmp_path / "coco.json"))
    assert coco.getImgIds() == [1, 2]


def _context(tmp_path, max_annotations=None) -> ExportContext:
    return ExportContext(Folder(str(tmp_path)), CATEGORIES, {"method": "m"}, None, 0.5,
                         options=ExportOptions(coco_max_annotations=max_annotations))


def test_the_coco_exporter_splits_above_its_bound(tmp_path):
    rng = np.random.default_rng(2)
    images = [_image(i, 4, rng) for i in range(1, 9)]
    with CocoExporter(_context(tmp_path, 9)) as exporter:
        for image, annotations in images:
            exporter.add(image, annotations)
    assert exporter.files == [COCO_INDEX]
    index = json.loads((tmp_path / COCO_INDEX).read_text())
    assert all(entry["annotations"] <= 9 for entry in index["files"])
    ids = [a for entry in index["files"]
           for a in COCO(str(tmp_path / "coco" / entry["file"])).getAnnIds()]
    assert sorted(ids) == sorted(a["id"] for _, found in images for a in found)
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(
        ["coco", "index.json"] + [entry["file"] for entry in index["files"]])


@pytest.mark.parametrize("exporter_class", [CocoExporter, LabelStudioExporter,
                                            CvatImagesExporter, HfExporter])
def test_an_export_that_raises_leaves_no_file(tmp_path, exporter_class, monkeypatch):
    # hf: a file per row, published at once, so the failure has published files to take back
    monkeypatch.setattr(hf, "ROWS_PER_GROUP", 1)
    monkeypatch.setattr(hf, "MAX_FILE_BYTES", 0)
    rng = np.random.default_rng(3)
    with pytest.raises(RuntimeError), exporter_class(_context(tmp_path, 2)) as exporter:
        for image_id in range(1, 5):
            exporter.add(*_image(image_id, 2, rng))
        raise RuntimeError("the source broke")
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
