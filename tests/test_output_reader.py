"""The output package: row builders, the part layout, the streaming reader, the merge."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from labeler.io.folders import Folder
from labeler.methods.base import ImageLabels
from labeler.output import parts, schema
from labeler.output.merge import merge_outputs
from labeler.output.reader import OutputReader, OutputReadError
from labeler.output.rows import Provenance, annotation_id, failed_image_row, labeled_rows
from tests._output_fixture import FixtureImage, segments_from_label_map, write_output

CATEGORIES = [{"id": 1, "name": "segment", "supercategory": "segment"}]
PROVENANCE = Provenance(method="diffseg", model="tiny", resource_digest=None, run_id="r1")


def _synthetic_output(root, n_images: int, per_image: int, shard_size: int = 250) -> Folder:
    """A merged output of ``n_images`` labeled images with ``per_image`` annotations each,
    built with the real row builders, part writers and merge."""
    output = Folder(str(root))
    label_map = np.repeat(np.arange(per_image, dtype=np.int32), 2).reshape(2, per_image)
    labels = ImageLabels(label_map, np.ones(per_image, np.int64), np.linspace(0, 1, per_image))
    shard_ids = []
    for start in range(1, n_images + 1, shard_size):
        shard_id = f"s{start:07d}"
        images, annotations = [], []
        for image_id in range(start, min(start + shard_size, n_images + 1)):
            image, rows = labeled_rows(f"mem://{image_id}.png", image_id, per_image, 2, labels,
                                       {1: "segment"}, PROVENANCE, shard_id)
            images.append(image)
            annotations += rows
        for kind, rows in ((parts.IMAGES, images), (parts.ANNOTATIONS, annotations)):
            output.write_bytes(parts.shard_part(shard_id, kind), parts.encode_part(kind, rows))
        shard_ids.append(shard_id)
    merge_outputs(output, shard_ids, CATEGORIES, {"method": "diffseg"})
    return output


def _peak_while_iterating(output: Folder) -> tuple[int, int]:
    """(tracemalloc peak in bytes, annotations seen) while streaming every image of ``output``."""
    tracemalloc.start()
    try:
        seen = sum(len(image.annotations) for image in OutputReader.open(output).images())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, seen


def test_reader_memory_stays_flat_in_the_collection_size(tmp_path):
    small = _synthetic_output(tmp_path / "small", n_images=2_000, per_image=10)
    large = _synthetic_output(tmp_path / "large", n_images=20_000, per_image=10)
    small_peak, small_seen = _peak_while_iterating(small)
    large_peak, large_seen = _peak_while_iterating(large)
    assert (small_seen, large_seen) == (20_000, 200_000)
    assert large_peak < 2 * small_peak, (small_peak, large_peak)


def test_row_builders_skip_empty_labels_and_number_annotations_stably():
    label_map = np.array([[0, 0, 2], [2, 2, -1]], dtype=np.int32)
    labels = ImageLabels(label_map, np.array([1, 1, 1]), np.array([0.5, 0.7, 0.9]))
    image, annotations = labeled_rows("a.png", 7, 3, 2, labels, {1: "segment"}, PROVENANCE, "s")
    assert image["status"] == schema.IMAGE_STATUS_LABELED and image["n_annotations"] == 2
    assert [a["id"] for a in annotations] == [annotation_id(7, 0), annotation_id(7, 2)]
    assert [a["area"] for a in annotations] == [2, 3]
    assert annotations[1]["run_id"] == "r1" and annotations[1]["score"] == 0.9
    failed = failed_image_row("b.png", 8, "truncated", "x" * 900, "s")
    assert failed["status"] == schema.IMAGE_STATUS_FAILED and len(failed["detail"]) == 500
    # both kinds of rows fit their part's schema
    parts.encode_part(parts.IMAGES, [image, failed])
    parts.encode_part(parts.ANNOTATIONS, annotations)


def _fixture_output(tmp_path) -> str:
    labels = np.zeros((6, 8), dtype=np.int32)
    labels[:, 4:] = 1
    labels[0, 0] = 2
    images = [
        FixtureImage("first", np.full((6, 8, 3), 40, np.uint8), segments_from_label_map(labels)),
        FixtureImage("broken", np.zeros((4, 4, 3), np.uint8), failed="truncated"),
        FixtureImage("second", np.full((6, 8, 3), 90, np.uint8), segments_from_label_map(labels)),
    ]
    write_output(str(tmp_path), images, CATEGORIES)
    return str(tmp_path / "out")


def test_reader_of_shard_parts_equals_reader_of_merged_output(tmp_path):
    out = _fixture_output(tmp_path)
    merged = OutputReader.open(Folder(out))
    shards = OutputReader.of_shards(Folder(out), [s for s, _, _ in merged.sources], CATEGORIES, {})
    as_rows = lambda reader: [(i.row, i.annotations) for i in reader.images()]
    assert as_rows(merged) == as_rows(shards)
    statuses = [image.row["status"] for image in merged.images()]
    assert statuses == ["labeled", "failed", "labeled"]
    assert [len(image.annotations) for image in merged.images([3])] == [3]
    assert merged.category_counts() == {1: 6}
    assert merged.categories == CATEGORIES


def test_merge_refuses_a_shard_without_committed_parts(tmp_path):
    with pytest.raises(OutputReadError, match="missing"):
        merge_outputs(Folder(str(tmp_path)), ["missing"], CATEGORIES, {})
    assert not (tmp_path / "coco.json").exists()
