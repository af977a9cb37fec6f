"""Hugging Face ``datasets`` as the judge: an output folder and ``--format hf`` load in one call."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from tests._output_fixture import FixtureImage, write_output, write_review_output
from tests.consumers import export, reference_masks

datasets = pytest.importorskip("datasets")
torch = pytest.importorskip("torch")

@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    write_review_output(str(root))
    return root, root / "out"


def test_the_output_folder_loads_with_one_call(finished, tmp_path):
    _, output = finished
    images = datasets.load_dataset(str(output), split="train", cache_dir=str(tmp_path))
    assert images.to_list() == pq.read_table(output / "images.parquet").to_pylist()
    annotations = datasets.load_dataset(str(output), "annotations", split="train",
                                        cache_dir=str(tmp_path))
    assert annotations.num_rows == 3
    assert sorted(annotations["category_name"]) == ["cat", "dog", "dog"]
    assert (output / "coco.json").is_file()  # there, and left out by the card's configs


def _collate(rows: list[dict]) -> dict:
    """A training batch: images as (B, 3, H, W) tensors and per-image (N, H, W) masks."""
    images = [torch.from_numpy(np.array(row["image"].convert("RGB"))).permute(2, 0, 1)
              for row in rows]
    masks = [torch.from_numpy(np.stack([
        mask_utils.decode({"size": o["segmentation"]["size"],
                           "counts": o["segmentation"]["counts"].encode()})
        for o in row["objects"]]) if row["objects"] else np.zeros((0, *img.shape[1:]), np.uint8))
        for row, img in zip(rows, images)]
    labels = [torch.tensor([o["category"] for o in row["objects"]], dtype=torch.long)
              for row in rows]
    return {"file_name": [row["file_name"] for row in rows], "images": images, "masks": masks,
            "labels": labels}


def test_hf_export_trains_through_a_dataloader(finished, tmp_path):
    root, output = finished
    code, text = export(output, "hf", tmp_path / "hf", "--images", "copy")
    assert code == 0, text
    dataset = datasets.load_dataset(str(tmp_path / "hf"), split="train",
                                    cache_dir=str(tmp_path / "cache"))
    category = dataset.features["objects"].feature["category"]
    assert isinstance(category, datasets.ClassLabel) and category.names == ["cat", "dog"]
    assert dataset.num_rows == 3  # the labeled images; the failed one is not a training row
    reference = reference_masks(output)
    seen = {}
    for batch in torch.utils.data.DataLoader(dataset, batch_size=2, collate_fn=_collate):
        for name, image, masks, labels in zip(batch["file_name"], batch["images"],
                                              batch["masks"], batch["labels"]):
            source = np.array(Image.open(root / "src" / name))
            assert torch.equal(image, torch.from_numpy(source).permute(2, 0, 1))
            seen[name] = (masks.numpy(), labels.tolist())
    assert sorted(seen) == ["a.png", "b.png", "c.png"]
    for name, (masks, labels) in seen.items():
        assert len(masks) == len(reference[name])
        for mine, theirs in zip(masks, reference[name]):
            assert np.array_equal(mine, theirs)
    assert seen["a.png"][1] == [0, 1] and seen["b.png"][1] == [1]
    # the bytes are embedded: the dataset does not need the source folder
    assert dataset.with_format("arrow")[0:1]["image"].to_pylist()[0]["bytes"] == (
        root / "src" / "a.png").read_bytes()


def test_hf_export_without_images_references_the_sources(finished, tmp_path):
    root, output = finished
    code, text = export(output, "hf", tmp_path / "hf")
    assert code == 0, text
    dataset = datasets.load_dataset(str(tmp_path / "hf"), split="train",
                                    cache_dir=str(tmp_path / "cache"))
    stored = dataset.with_format("arrow")["image"].to_pylist()
    assert [s["path"] for s in stored] == [str(root / "src" / n) for n in ("a.png", "b.png",
                                                                            "c.png")]
    assert all(s["bytes"] is None for s in stored)
    assert dataset[1]["image"].size == (20, 16)  # opened from the source when decoded


def test_a_shard_without_annotations_does_not_break_loading(tmp_path):
    """A shard whose images all failed has an empty annotation part: it holds no row group,
    which ``datasets`` skips (an empty row group fails the whole load)."""
    mask = np.zeros((8, 8), bool)
    mask[2:5, 2:6] = True
    write_output(str(tmp_path), [
        FixtureImage("a", np.zeros((8, 8, 3), np.uint8), failed="not_an_image"),
        FixtureImage("b", np.zeros((8, 8, 3), np.uint8), [(1, mask, 0.5)]),
    ], [{"id": 1, "name": "cat"}], method="slime", relative_names=True, shard_size=1)
    output = tmp_path / "out"
    assert len(list((output / "annotations").iterdir())) == 2
    annotations = datasets.load_dataset(str(output), "annotations", split="train",
                                        cache_dir=str(tmp_path / "cache"))
    assert annotations["image_id"] == [2]


def test_hf_export_refuses_links(finished, tmp_path):
    _, output = finished
    code, _ = export(output, "hf", tmp_path / "hf", "--images", "link")
    assert code == 2
