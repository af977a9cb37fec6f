"""SLiMe training data: pairing by stem, mask checks, fsspec, seeded augmentation."""

from __future__ import annotations

import io

import fsspec
import numpy as np
import pytest
import torch
from PIL import Image

from labeler.methods.annotations import AnnotatedImage, decode_mask, load_annotated, pair_files
from labeler.methods.slime.data import AugmentSettings, augment, choose_crop, prepare
from tests.helpers import flat_regions_image


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format="PNG")
    return buffer.getvalue()


def write_pair(folder, stem, image, mask, mask_ext=".png"):
    folder.mkdir(exist_ok=True)
    (folder / f"{stem}.png").write_bytes(png_bytes(image))
    if mask_ext == ".npy":
        np.save(folder / f"{stem}.npy", mask)
    else:
        (folder / f"{stem}{mask_ext}").write_bytes(png_bytes(mask.astype(np.uint8)))


def test_load_pairs_by_stem_png_and_npy(tmp_path):
    image, regions = flat_regions_image(40, 60, "quadrants")
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    (images / "b.png").write_bytes(png_bytes(image))
    (images / "a.png").write_bytes(png_bytes(image))
    (masks / "a.png").write_bytes(png_bytes(regions.astype(np.uint8)))
    np.save(masks / "b.npy", regions)
    loaded = load_annotated(str(images), str(masks), 4)
    assert [sample.name for sample in loaded] == ["a", "b"]
    assert loaded[0].image.shape == (40, 60, 3) and loaded[0].mask.dtype == np.int64
    np.testing.assert_array_equal(loaded[0].image, image)
    np.testing.assert_array_equal(loaded[1].mask, regions)


def test_images_and_npy_masks_in_one_folder_like_the_reference(tmp_path):
    image, regions = flat_regions_image(32, 32, "halves")
    write_pair(tmp_path, "x", image, regions, mask_ext=".npy")
    (sample,) = load_annotated(str(tmp_path), str(tmp_path), 2)
    np.testing.assert_array_equal(sample.mask, regions)


def test_unpaired_files_are_named():
    with pytest.raises(ValueError, match="images without a mask: c.*masks without an image: z"):
        pair_files(["/i/a.png", "/i/c.jpg"], ["/m/a.png", "/m/z.npy"])
    with pytest.raises(ValueError, match="two masks share the name 'a'"):
        pair_files(["/i/a.png"], ["/m/a.png", "/m/a.npy"])


def test_mask_errors(tmp_path):
    image, regions = flat_regions_image(32, 32, "quadrants")
    write_pair(tmp_path / "i", "x", image, regions, mask_ext=".npy")
    with pytest.raises(ValueError, match="values must be 0..2 for 3 classes, found 0..3"):
        load_annotated(str(tmp_path / "i"), str(tmp_path / "i"), 3)
    write_pair(tmp_path / "j", "y", image, regions[:16], mask_ext=".npy")
    with pytest.raises(ValueError, match="mask is 32x16 but the image is 32x32"):
        load_annotated(str(tmp_path / "j"), str(tmp_path / "j"), 4)
    with pytest.raises(ValueError, match="colour image"):
        decode_mask(png_bytes(image), "m.png")
    with pytest.raises(ValueError, match="2-D integer label map"):
        buffer = io.BytesIO()
        np.save(buffer, np.zeros((4, 4, 3)))
        decode_mask(buffer.getvalue(), "m.npy")
    palette = Image.fromarray(regions.astype(np.uint8), "L").convert("P")
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG")
    np.testing.assert_array_equal(decode_mask(buffer.getvalue(), "p.png"), regions)


def test_reads_through_fsspec_uris():
    image, regions = flat_regions_image(24, 24, "halves")
    fs = fsspec.filesystem("memory")
    fs.pipe("/slime-data/imgs/s.png", png_bytes(image))
    fs.pipe("/slime-data/masks/s.png", png_bytes(regions.astype(np.uint8)))
    (sample,) = load_annotated("memory://slime-data/imgs", "memory://slime-data/masks", 2)
    np.testing.assert_array_equal(sample.mask, regions)
    with pytest.raises(FileNotFoundError):
        load_annotated("memory://slime-data/nothing", "memory://slime-data/masks", 2)


def sample_image() -> AnnotatedImage:
    image, regions = flat_regions_image(80, 80, "quadrants")
    return AnnotatedImage("q", image, regions, "0" * 16)


def test_augmentation_is_seeded_and_keeps_shapes():
    settings = AugmentSettings(size=64, mask_size=16)
    image, mask = prepare(sample_image(), 64)
    runs = []
    for _ in range(2):
        generator = torch.Generator().manual_seed(5)
        runs.append([augment(image, mask, settings, generator, target=step % 4) for step in range(6)])
    for (pixels_a, mask_a), (pixels_b, mask_b) in zip(*runs):
        assert torch.equal(pixels_a, pixels_b) and torch.equal(mask_a, mask_b)
        assert pixels_a.shape == (3, 64, 64) and mask_a.shape == (16, 16)
        assert pixels_a.min() >= -1 and pixels_a.max() <= 1
        assert mask_a.min() >= 0 and mask_a.max() <= 3
    assert any(not torch.equal(a[0], runs[0][0][0]) for a in runs[0][1:])


def test_crop_keeps_most_of_the_target_class():
    mask = torch.zeros(100, 100, dtype=torch.long)
    mask[80:, 80:] = 1
    generator = torch.Generator().manual_seed(0)
    for _ in range(10):
        top, left = choose_crop(mask, 1, 60, generator, 0.3, 100)
        kept = int((mask[top : top + 60, left : left + 60] == 1).sum())
        assert kept > 0.3 * 400
