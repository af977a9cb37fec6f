"""`labeler export`: relative names, each format loaded by its real consumer, filters counted."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from labeler.output.exporters.polygons import mask_polygons, single_polygon
from tests.consumers import (
    assert_pooled_iou,
    assert_same_masks,
    cli,
    datumaro_masks,
    export,
    fiftyone_masks,
    iou,
    reference_masks,
    ultralytics_masks,
)
from tests.helpers import flat_regions_image


@pytest.fixture(scope="module")
def labeled(tmp_path_factory):
    """A DiffSeg run on a folder with two ``a.jpg`` in different sub-folders."""
    folder = tmp_path_factory.mktemp("photos")
    image, _ = flat_regions_image(96, 128, "quadrants")
    for sub in ("cats", "dogs"):
        (folder / sub).mkdir()
    Image.fromarray(image).save(folder / "cats" / "a.jpg", quality=95)
    Image.fromarray(image[:, :64]).save(folder / "dogs" / "a.jpg", quality=95)
    Image.fromarray(image[:80, :40]).save(folder / "top.png")
    output = tmp_path_factory.mktemp("out") / "labels"
    code, text = cli("run", "--executor", "local", "--method", "diffseg", "--model", "tiny",
                     "--input", str(folder), "--output", str(output), "--shard-size", "2",
                     "--no-progress")
    assert code == 0, text
    return folder, output


def test_coco_json_names_are_relative_to_the_image_root(labeled):
    folder, output = labeled
    coco = json.loads((output / "coco.json").read_text())
    names = sorted(image["file_name"] for image in coco["images"])
    assert names == ["cats/a.jpg", "dogs/a.jpg", "top.png"]
    for image in coco["images"]:
        assert image["coco_url"] == str(folder / image["file_name"])
    assert coco["info"]["image_root"] == str(folder)
    rows = pq.read_table(output / "images.parquet").to_pylist()
    assert {row["file_name"]: row["uri"] for row in rows} == {
        name: str(folder / name) for name in names}
    assert json.loads((output / "run" / "config.json").read_text())["image_root"] == str(folder)


def test_manifest_and_parquet_inputs_get_stable_unique_names(labeled, tmp_path):
    folder, _ = labeled
    manifest = tmp_path / "list.txt"
    manifest.write_text(f"{folder}/cats/a.jpg\n{folder}/dogs/a.jpg\n")
    output = tmp_path / "from-manifest"
    # the images are outside the manifest's folder: the input policy must allow local paths
    code, text = cli("run", "--executor", "local", "--method", "diffseg", "--model", "tiny",
                     "--input", str(manifest), "--output", str(output), "--allow-protocols",
                     "file", "--no-progress")
    assert code == 0, text
    coco = json.loads((output / "coco.json").read_text())
    assert [i["file_name"] for i in coco["images"]] == ["00000001_a.jpg", "00000002_a.jpg"]
    assert coco["info"]["image_root"] is None
    images = pa.array([{"bytes": (folder / "top.png").read_bytes(), "path": "x/top.png"},
                       {"bytes": (folder / "cats" / "a.jpg").read_bytes(), "path": None}])
    parquet = tmp_path / "images.parquet"
    pq.write_table(pa.table({"image": images}), parquet)
    output = tmp_path / "from-parquet"
    code, text = cli("run", "--executor", "local", "--method", "diffseg", "--model", "tiny",
                     "--input", str(parquet), "--output", str(output), "--no-progress")
    assert code == 0, text
    coco = json.loads((output / "coco.json").read_text())
    assert [i["file_name"] for i in coco["images"]] == ["00000001_top.png", "00000002"]
    assert coco["images"][0]["coco_url"].endswith("images.parquet#row=0&path=x/top.png")
    # --images copy writes every image under its name, bytes taken from the Parquet rows
    code, text = export(output, "coco-rle", tmp_path / "copy", "--images", "copy")
    assert code == 0, text
    assert (tmp_path / "copy" / "images" / "00000001_top.png").read_bytes() == (
        folder / "top.png").read_bytes()


def test_polygons_keep_holes_and_fragments_exactly():
    mask = np.zeros((40, 50), np.uint8)
    mask[5:35, 5:35] = 1
    mask[15:25, 15:25] = 0   # a hole
    mask[37, 45] = 1         # a one-pixel fragment
    mask[2:4, 40:48] = 1     # a thin fragment
    polygons = mask_polygons(mask, tolerance=0.0)
    assert len(polygons) == 3
    shape = mask.shape
    decoded = mask_utils.decode(mask_utils.merge(
        mask_utils.frPyObjects([p.ravel().tolist() for p in polygons], *shape)))
    assert iou(decoded, mask) == 1.0
    joined = single_polygon(polygons)
    decoded = mask_utils.decode(mask_utils.frPyObjects([joined.ravel().tolist()], *shape)[0])
    assert iou(decoded, mask) == 1.0


@pytest.mark.parametrize("fmt", ["coco-rle", "coco-polygons"])
def test_coco_exports_load_in_pycocotools_and_torchvision_layout(labeled, tmp_path, fmt):
    folder, output = labeled
    code, text = export(output, fmt, tmp_path, "--tolerance", "0")
    assert code == 0, text
    exported = COCO(str(tmp_path / "annotations.json"))
    reference = reference_masks(output)
    for image_id, image in exported.imgs.items():
        assert (folder / image["file_name"]).is_file()
        masks = [exported.annToMask(a) for a in exported.imgToAnns[image_id]]
        assert len(masks) == len(reference[image["file_name"]])
        for mine, theirs in zip(masks, reference[image["file_name"]]):
            assert mine.shape == (image["height"], image["width"])
            assert iou(mine, theirs) == 1.0


def test_supervision_loads_coco_polygons_with_the_image_root(labeled, tmp_path):
    sv = pytest.importorskip("supervision")
    folder, output = labeled
    assert export(output, "coco-polygons", tmp_path, "--tolerance", "0")[0] == 0
    dataset = sv.DetectionDataset.from_coco(
        images_directory_path=str(folder),
        annotations_path=str(tmp_path / "annotations.json"), force_masks=True)
    reference = reference_masks(output)
    assert len(dataset) == 3
    for path, image, detections in dataset:
        name = str(path)[len(str(folder)) + 1:]
        assert detections.mask.shape[1:] == image.shape[:2]
        assert_pooled_iou(list(detections.mask), reference[name], 0.85)


def test_cvat_layout_finds_images_beside_the_annotations(labeled, tmp_path):
    _, output = labeled
    assert export(output, "cvat", tmp_path, "--images", "copy", "--tolerance", "0")[0] == 0
    coco = COCO(str(tmp_path / "annotations" / "instances_default.json"))
    for image in coco.imgs.values():
        with Image.open(tmp_path / "images" / image["file_name"]) as picture:
            assert picture.size == (image["width"], image["height"])


def test_datumaro_imports_the_cvat_layout_with_its_masks(labeled, tmp_path):
    dm = pytest.importorskip("datumaro")
    _, output = labeled
    assert export(output, "cvat", tmp_path, "--images", "copy", "--tolerance", "0")[0] == 0
    dataset = dm.Dataset.import_from(str(tmp_path), "coco_instances")
    found = datumaro_masks(dataset)
    reference = reference_masks(output)
    assert sorted(found) == sorted(str(tmp_path / "images" / name) for name in reference)
    for name, masks in reference.items():
        size, mine = found[str(tmp_path / "images" / name)]
        assert size == masks[0].shape and all(m.shape == size for m in mine)
        assert_same_masks(mine, masks)


def test_yolo_seg_labels_parse_to_the_masks(labeled, tmp_path):
    import yaml

    folder, output = labeled
    assert export(output, "yolo-seg", tmp_path, "--images", "link", "--tolerance", "0")[0] == 0
    data = yaml.safe_load((tmp_path / "data.yaml").read_text())
    assert data["names"] == {0: "segment"} and data["train"] == "images/train"
    reference = reference_masks(output)
    for name, masks in reference.items():
        assert (tmp_path / "images" / "train" / name).resolve() == (folder / name).resolve()
        label_file = tmp_path / "labels" / "train" / (name.rsplit(".", 1)[0] + ".txt")
        lines = label_file.read_text().splitlines()
        assert len(lines) == len(masks)
        for line, mask in zip(lines, masks):
            # the Ultralytics label grammar: class id, then an even number of 0..1 coordinates
            class_id, *values = line.split()
            points = np.array(values, float).reshape(-1, 2)
            assert class_id == "0" and points.min() >= 0 and points.max() <= 1
            height, width = mask.shape
            polygon = (points * [width, height]).ravel().tolist()
            decoded = mask_utils.decode(mask_utils.frPyObjects([polygon], height, width)[0])
            assert iou(decoded, mask) > 0.99


def test_ultralytics_checks_and_parses_the_yolo_seg_export(labeled, tmp_path):
    _, output = labeled
    out = tmp_path / "yolo"
    assert export(output, "yolo-seg", out, "--images", "copy", "--tolerance", "0")[0] == 0
    names, found = ultralytics_masks(out / "data.yaml", tmp_path)
    assert names == {"0": "segment"}
    reference = reference_masks(output)
    assert sorted(found) == sorted(reference)
    for name, masks in reference.items():
        assert_pooled_iou(found[name], masks, 0.85)


@pytest.mark.slow
def test_fiftyone_loads_masks_and_confidence_with_the_image_root(labeled, tmp_path):
    folder, output = labeled
    assert export(output, "fiftyone", tmp_path / "fo")[0] == 0
    labels, found = fiftyone_masks(tmp_path / "fo", folder, tmp_path)
    assert labels == ["segment"]
    coco = COCO(str(output / "coco.json"))
    assert sorted(found) == sorted(image["file_name"] for image in coco.imgs.values())
    for image_id, image in coco.imgs.items():
        masks, confidences = found[image["file_name"]]
        annotations = coco.imgToAnns[image_id]
        assert_same_masks(masks, [coco.annToMask(a) for a in annotations])
        assert sorted(confidences) == pytest.approx(sorted(a["score"] for a in annotations))


def test_label_maps_are_16bit_instance_pngs(labeled, tmp_path):
    _, output = labeled
    assert export(output, "label-maps", tmp_path)[0] == 0
    assert json.loads((tmp_path / "label_maps.json").read_text())["kind"] == "instances-16bit"
    for name, masks in reference_masks(output).items():
        with Image.open(tmp_path / "masks" / (name.rsplit(".", 1)[0] + ".png")) as picture:
            values = np.array(picture)
        assert values.shape == masks[0].shape and values.dtype == np.uint16
        for number, mask in enumerate(masks, start=1):
            assert np.array_equal(values == number, mask.astype(bool))


def test_label_studio_tasks_convert_with_label_studios_converter(labeled, tmp_path):
    converter = pytest.importorskip("label_studio_converter")
    _, output = labeled
    assert export(output, "label-studio", tmp_path / "ls", "--tolerance", "0")[0] == 0
    tasks = json.loads((tmp_path / "ls" / "tasks.json").read_text())
    # what Label Studio exports once the pre-annotations are accepted: results as annotations
    for task in tasks:
        task["annotations"] = [{"id": task["id"], "result": task["predictions"][0]["result"]}]
    (tmp_path / "export.json").write_text(json.dumps(tasks))
    config = (tmp_path / "ls" / "labeling_config.xml").read_text()
    ls = converter.Converter(config=config, project_dir=str(tmp_path))
    ls.convert_to_coco(str(tmp_path / "export.json"), str(tmp_path / "coco"), is_dir=False)
    converted = COCO(str(tmp_path / "coco" / "result.json"))
    reference = reference_masks(output)
    total = sum(len(masks) for masks in reference.values())
    assert sum(len(polygons) for polygons in [
        a["segmentation"] for a in converted.anns.values()]) >= total
    for image_id, image in converted.imgs.items():
        name = json.loads(json.dumps(tasks[image_id]["data"]))["file_name"]
        assert (image["width"], image["height"]) == reference[name][0].shape[::-1]


def test_label_studio_brush_masks_convert_with_label_studios_converter(labeled, tmp_path):
    converter = pytest.importorskip("label_studio_converter")
    _, output = labeled
    assert export(output, "label-studio-brush", tmp_path / "ls")[0] == 0
    tasks = json.loads((tmp_path / "ls" / "tasks.json").read_text())
    for task in tasks:  # accepted pre-annotations, as Label Studio exports them
        task["annotations"] = [{"id": task["id"], "result": task["predictions"][0]["result"]}]
    (tmp_path / "export.json").write_text(json.dumps(tasks))
    config = (tmp_path / "ls" / "labeling_config.xml").read_text()
    assert "<BrushLabels" in config
    ls = converter.Converter(config=config, project_dir=str(tmp_path))
    (tmp_path / "npy").mkdir()
    ls.convert(str(tmp_path / "export.json"), str(tmp_path / "npy"),
               "BRUSH_TO_NUMPY", is_dir=False)
    reference = reference_masks(output)
    for task in tasks:
        masks = reference[task["data"]["file_name"]]
        # one array per brush result: task-<id>-annotation-<id>-by-<user>-label-<class>-<n>.npy
        files = sorted(tmp_path.glob(f"npy/task-{task['id']}-*.npy"),
                       key=lambda path: int(path.stem.rsplit("-", 1)[1]))
        assert len(files) == len(masks)
        for path, mask in zip(files, masks):
            assert np.array_equal(np.load(path) > 0, mask.astype(bool))


def test_filters_are_counted_not_silently_dropped(labeled, tmp_path):
    _, output = labeled
    coco = json.loads((output / "coco.json").read_text())
    total = len(coco["annotations"])
    code, text = export(output, "coco-rle", tmp_path, "--max-segments", "1")
    assert code == 0, text
    exported = json.loads((tmp_path / "annotations.json").read_text())
    summary = json.loads((tmp_path / "export.json").read_text())
    assert len(exported["annotations"]) == len(coco["images"])
    assert summary["filtered"]["max_segments"] == total - len(coco["images"])
    assert "filtered out" in text
    code, _ = export(output, "coco-rle", tmp_path / "b", "--min-area", "0.5",
                     "--min-score", "segment=0")
    summary = json.loads((tmp_path / "b" / "export.json").read_text())
    assert summary["annotations"] + summary["filtered"]["area"] == total


def test_unknown_class_in_a_filter_is_refused(labeled, tmp_path, capsys):
    _, output = labeled
    assert export(output, "coco-rle", tmp_path / "x", "--min-score", "wheel=0.5")[0] == 2
    assert "wheel" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
