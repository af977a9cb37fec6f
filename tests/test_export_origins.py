"""A DiffSeg and a SLiMe output made from a folder, from s3:// and from Parquet-of-bytes, opened
by the consumers with the images found via the image root (folder) or beside the export.

Each case labels two small images of different shapes, exports ``cvat`` (Datumaro),
``coco-polygons`` (supervision, images from the image root or the copied ``images/``) and
``fiftyone`` (FiftyOne, where its venv is installed), and checks each consumer's masks against
the output's own ``coco.json``: one mask per annotation, each the size of its image. torchvision
is not among them: its PyPI wheels for torch 2.13 are CUDA builds that cannot be imported beside
the CPU torch (tests/consumers.py). Slow: six runs (in-process executor) and a SLiMe
fit.
"""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pycocotools.coco import COCO

from tests.consumers import (
    assert_pooled_iou,
    assert_same_masks,
    cli,
    datumaro_masks,
    export,
    fiftyone_masks,
)
from tests.helpers import flat_regions_image
from tests.test_slime_command import write_annotated

pytestmark = pytest.mark.slow
#: (height, width) of the two images: a portrait and a landscape one
SHAPES = {"wide.png": (48, 64), "sub/tall.png": (64, 48)}


def image_bytes(height: int, width: int) -> bytes:
    image, _ = flat_regions_image(height, width, "quadrants")
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory, labeler_cache) -> str:
    """A SLiMe embedding set (background, red, green) fitted on one 64x64 image."""
    folder = tmp_path_factory.mktemp("slime-fit")
    write_annotated(folder)
    output = folder / "parts.safetensors"
    code, text = cli("slime", "fit", "--images", str(folder / "images"), "--masks",
                     str(folder / "masks"), "--classes", "background,red,green", "--output",
                     str(output), "--model", "tiny", "--seed", "3", "--epochs", "1",
                     "--fit-size", "128", "--mask-size", "16", "--patches-per-side", "1",
                     "--patch-size", "512", "--device", "cpu", "--no-progress")
    assert code == 0, text
    return str(output)


def make_input(origin: str, tmp_path, request) -> str:
    """The two images as a folder, an s3:// prefix or a Parquet file of bytes; its URI."""
    if origin == "folder":
        for name, shape in SHAPES.items():
            (tmp_path / "photos" / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "photos" / name).write_bytes(image_bytes(*shape))
        return str(tmp_path / "photos")
    if origin == "s3":
        server = request.getfixturevalue("s3_env")
        bucket = f"origins-{tmp_path.name[-12:].lower().replace('_', '-')}"
        server.create_bucket(bucket)
        filesystem = server.filesystem()
        for name, shape in SHAPES.items():
            filesystem.pipe(f"{bucket}/photos/{name}", image_bytes(*shape))
        return f"s3://{bucket}/photos"
    rows = [{"bytes": image_bytes(*shape), "path": name} for name, shape in SHAPES.items()]
    pq.write_table(pa.table({"image": pa.array(rows)}), tmp_path / "images.parquet")
    return str(tmp_path / "images.parquet")


@pytest.mark.parametrize("method", ["diffseg", "slime"])
@pytest.mark.parametrize("origin", ["folder", "s3", "parquet"])
def test_output_opens_in_the_consumers(origin, method, tmp_path, request):
    source = make_input(origin, tmp_path, request)
    output = tmp_path / "labels"
    flags = ["--embeddings", request.getfixturevalue("embeddings")] if method == "slime" else []
    code, text = cli("run", "--executor", "local", "--method", method, "--model", "tiny",
                     "--input", source, "--output", str(output), "--no-progress", *flags)
    assert code == 0, text
    coco = COCO(str(output / "coco.json"))
    assert len(coco.imgs) == len(SHAPES) and coco.anns
    reference = {image["file_name"]: [coco.annToMask(a) for a in coco.imgToAnns[image_id]]
                 for image_id, image in coco.imgs.items()}
    sizes = {image["file_name"]: (image["height"], image["width"]) for image in coco.imgs.values()}
    assert sorted(sizes.values()) == sorted(SHAPES.values())
    # a folder's images are found via its image root; the others are copied beside the export
    images = ["--images", "none" if origin == "folder" else "copy"]

    assert export(output, "cvat", tmp_path / "cvat", "--images", "copy", "--tolerance", "0")[0] == 0
    dm = pytest.importorskip("datumaro")
    found = datumaro_masks(dm.Dataset.import_from(str(tmp_path / "cvat"), "coco_instances"))
    assert len(found) == len(reference)
    for name, masks in reference.items():
        size, mine = found[str(tmp_path / "cvat" / "images" / name)]
        assert size == sizes[name]
        assert_same_masks(mine, masks)

    assert export(output, "coco-polygons", tmp_path / "coco", *images, "--tolerance", "0")[0] == 0
    root = source if origin == "folder" else str(tmp_path / "coco" / "images")
    sv = pytest.importorskip("supervision")
    dataset = sv.DetectionDataset.from_coco(
        images_directory_path=root, annotations_path=str(tmp_path / "coco" / "annotations.json"),
        force_masks=True)
    assert len(dataset) == len(reference)
    for path, image, detections in dataset:
        name = str(path)[len(root) + 1:]
        assert image.shape[:2] == sizes[name]
        assert_pooled_iou(list(detections.mask), reference[name], 0.85)

    assert export(output, "fiftyone", tmp_path / "fo", *images)[0] == 0
    data_path = source if origin == "folder" else tmp_path / "fo" / "data"
    labels, found = fiftyone_masks(tmp_path / "fo", data_path, tmp_path / "fiftyone")
    assert set(labels) <= {c["name"] for c in coco.cats.values()}
    assert sorted(found) == sorted(reference)
    for name, masks in reference.items():
        assert_same_masks(found[name][0], masks)
        assert all(m.shape == sizes[name] for m in found[name][0])
