"""One reading path and one decoder: `labeler run`, `labeler slime fit` and `labeler preview`
see the same pixels for the same file (EXIF orientation applied, alpha composited on white)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from labeler.io.folders import Folder
from labeler.io.listing import iter_inputs
from labeler.methods.annotations import load_annotated
from labeler.methods.base import ImageLabels, MethodProvenance
from labeler.output import parts
from labeler.output.merge import merge_outputs
from labeler.output.rows import AnnotationRow, ImageRow
from labeler.preview.build import build_preview
from labeler.runtime.plan import plan_run
from labeler.runtime.run_folder import RunFolder
from labeler.runtime.shard import ShardProcessor
from labeler.timing import StageTimer
from tests._output_fixture import bbox, rle

ORIENTATION = 0x0112


class RecordingSegmenter:
    """Labels every image as one segment and keeps the pixels it was given (what run decoded)."""

    categories: ClassVar[list[dict]] = [{"id": 1, "name": "segment", "supercategory": "segment"}]

    def __init__(self) -> None:
        self.seen: list[np.ndarray] = []
        self.timer = StageTimer()
        self.device = "cpu"

    def provenance(self) -> MethodProvenance:
        return MethodProvenance(method="test", model="none")

    def label(self, images: list[np.ndarray]) -> list[ImageLabels]:
        self.seen.extend(image.copy() for image in images)
        return [
            ImageLabels(np.zeros(im.shape[:2], np.int32), np.ones(1, np.int64), np.ones(1))
            for im in images
        ]


def _encoded(pixels: np.ndarray, fmt: str, orientation: int, **params) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt, exif=exif, **params)
    return buffer.getvalue()


def _rgba(height: int, width: int, seed: int) -> np.ndarray:
    """Random colours with every kind of alpha: transparent, opaque and in between."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 4), dtype=np.uint8)
    pixels[: height // 3, :, 3] = 0
    pixels[height // 3 : 2 * height // 3, :, 3] = 255
    return pixels


def _upright_mask(height: int, width: int) -> bytes:
    """A label map drawn on the upright image: class 1 in its top-left quarter."""
    mask = np.zeros((height, width), np.uint8)
    mask[: height // 2, : width // 2] = 1
    buffer = io.BytesIO()
    Image.fromarray(mask).save(buffer, "PNG")
    return buffer.getvalue()


def test_fit_and_run_decode_exif_rotated_rgba_images_to_identical_pixels(tmp_path: Path) -> None:
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    # stored 40 wide x 24 high; orientations 6 and 8 show them 24 wide x 40 high, 3 turns them
    files = {
        "a.png": (_encoded(_rgba(24, 40, 1), "PNG", 6), (40, 24)),
        "b.webp": (_encoded(_rgba(24, 40, 2), "WEBP", 8, lossless=True), (40, 24)),
        "c.jpg": (_encoded(_rgba(24, 40, 3)[..., :3], "JPEG", 3, quality=95), (24, 40)),
    }
    for name, (data, (height, width)) in files.items():
        (images / name).write_bytes(data)
        (masks / f"{Path(name).stem}.png").write_bytes(_upright_mask(height, width))

    fitted = load_annotated(str(images), str(masks), num_classes=2)

    run = RunFolder(Folder(str(tmp_path / "out")))
    plan = plan_run(run, input_items_of(str(images)), shard_size=8)
    segmenter = RecordingSegmenter()
    stats = ShardProcessor(segmenter, 8, None, "run").process(run.output, plan["shards"][0]["shard_id"])
    assert stats["labeled"] == 3

    assert [sample.name for sample in fitted] == ["a", "b", "c"]
    for sample, seen in zip(fitted, segmenter.seen):
        assert sample.image.dtype == seen.dtype == np.uint8
        np.testing.assert_array_equal(sample.image, seen)  # bit for bit
        assert sample.mask.shape == seen.shape[:2]  # the upright-frame mask pairs with it
    # upright, and transparent pixels are white (composited), not the colour stored under them
    assert fitted[0].image.shape == (40, 24, 3) and fitted[2].image.shape == (24, 40, 3)
    raw = np.asarray(Image.open(images / "a.png").convert("RGBA"))
    upright = np.rot90(raw, k=-1)  # orientation 6: turn 90 degrees clockwise
    transparent = upright[..., 3] == 0
    assert transparent.any()
    assert np.all(fitted[0].image[transparent] == 255)
    opaque = upright[..., 3] == 255
    np.testing.assert_array_equal(fitted[0].image[opaque], upright[..., :3][opaque])


def input_items_of(uri: str) -> list[dict]:
    """The collection as `labeler run` plans it: one ``{"uri", "ref"}`` per image."""
    return [{"uri": ref.uri, "ref": ref.to_dict()} for ref in iter_inputs(uri)]


def test_a_mask_in_the_stored_frame_of_a_rotated_image_is_refused_with_the_rule(
    tmp_path: Path,
) -> None:
    (tmp_path / "x.png").write_bytes(_encoded(_rgba(24, 40, 4), "PNG", 6))
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "x.png").write_bytes(_upright_mask(24, 40))  # drawn on the stored pixels
    with pytest.raises(ValueError, match="size of the image as stored.*EXIF orientation 6.*upright"):
        load_annotated(str(tmp_path / "x.png"), str(tmp_path / "m"), num_classes=2)


def test_preview_of_a_parquet_of_bytes_input_shows_the_real_pixels(tmp_path: Path) -> None:
    height, width = 48, 64
    source = np.zeros((height, width, 3), np.uint8)
    source[:, : width // 2] = (220, 30, 30)
    source[:, width // 2 :] = (30, 30, 220)
    png = io.BytesIO()
    Image.fromarray(source).save(png, "PNG")
    images = pa.array(
        [{"bytes": png.getvalue(), "path": "a.png"}, {"bytes": png.getvalue(), "path": "b.png"}],
        type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
    )
    parquet = tmp_path / "train.parquet"
    pq.write_table(pa.table({"image": images}), parquet)

    refs = [item["uri"] for item in input_items_of(str(parquet))]
    assert refs == [f"{parquet}#row=0&path=a.png", f"{parquet}#row=1&path=b.png"]
    mask = np.zeros((height, width), bool)
    mask[:8, :8] = True
    out = tmp_path / "out"
    shard = "shard-00000"
    segmentation = rle(mask)
    image_rows = [
        ImageRow(uri=refs[0], image_id=1, status="labeled", reason=None, detail=None, width=width,
                 height=height, n_annotations=1, shard_id=shard, file_name="a.png",
                 retryable=None),
        ImageRow(uri=refs[1], image_id=2, status="failed", reason="method_error", detail="",
                 width=None, height=None, n_annotations=0, shard_id=shard, file_name="b.png",
                 retryable=False),
    ]
    annotation_rows = [AnnotationRow(
        id=4096, image_id=1, category_id=1, category_name="segment",
        segmentation_counts=segmentation["counts"], segmentation_size=segmentation["size"],
        area=int(mask.sum()), bbox=bbox(mask), iscrowd=0, score=1.0, file_name="a.png",
        method="test", model="none", resource_digest=None, run_id="test")]
    folder = Folder(str(out))
    for kind, table_rows in ((parts.IMAGES, image_rows), (parts.ANNOTATIONS, annotation_rows)):
        folder.write_bytes(parts.shard_part(shard, kind), parts.encode_part(kind, table_rows))
    merge_outputs(folder, [shard], [{"id": 1, "name": "segment", "supercategory": "segment"}],
                  {"method": "test"})

    result = build_preview(str(out), workers=1)

    (item,) = result.labeled
    assert item.note is None  # read and decoded: no "not readable" note
    overlay = np.asarray(Image.open(out / "preview" / str(item.href)).convert("RGB")).astype(int)
    # away from the mask and the legend, the overlay is the source (JPEG-encoded), not gray
    assert np.abs(overlay[20:40, 10:25] - (220, 30, 30)).max() < 16
    assert np.abs(overlay[20:40, 40:60] - (30, 30, 220)).max() < 16
    (failed,) = result.failed
    assert failed.href is not None  # the failed row's thumbnail is rendered from its bytes
    thumb = np.asarray(Image.open(out / "preview" / str(failed.href)).convert("RGB")).astype(int)
    assert np.abs(thumb[20:40, 10:25] - (220, 30, 30)).max() < 16
