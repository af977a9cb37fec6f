"""RLE encoding and the merged COCO outputs, judged by pycocotools."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from labeler.io.folders import Folder
from labeler.methods.base import compact_labels
from labeler.output import schema
from labeler.output.merge import merge_outputs
from labeler.output.rle import encode_label_map


def test_rle_round_trips_with_pycocotools_and_is_json_safe():
    rng = np.random.default_rng(0)
    label_map = rng.integers(-1, 3, size=(37, 53)).astype(np.int32)
    label_map[:5, :7] = 2
    masks = encode_label_map(label_map, 4)
    json.dumps([m.segmentation() for m in masks])
    for label, encoded in enumerate(masks):
        decoded = mask_utils.decode({"size": [37, 53], "counts": encoded.counts.encode()})
        np.testing.assert_array_equal(decoded, label_map == label)
        assert encoded.area == int((label_map == label).sum())
        if encoded.area:
            rows, cols = np.nonzero(label_map == label)
            assert encoded.bbox == [
                cols.min(),
                rows.min(),
                cols.max() - cols.min() + 1,
                rows.max() - rows.min() + 1,
            ]
    assert masks[3].area == 0  # label 3 absent: still described, with area 0


def test_compact_labels_renumbers_and_scores_by_mean_confidence():
    label_map = np.array([[5, 5, -1], [9, 9, 9]])
    confidence = np.array([[0.2, 0.4, 1.0], [1.0, 0.5, 0.0]])
    labels = compact_labels(label_map, confidence)
    np.testing.assert_array_equal(labels.label_map, [[0, 0, -1], [1, 1, 1]])
    np.testing.assert_allclose(labels.scores, [0.3, 0.5])
    np.testing.assert_array_equal(labels.category_ids, [1, 1])


def _write_shard(output: Folder, shard_id: str, image_ids: list[int], failed: set[int]) -> None:
    images, annotations = [], []
    for image_id in image_ids:
        if image_id in failed:
            images.append(
                {
                    "uri": f"mem://{image_id}.png",
                    "image_id": image_id,
                    "status": "failed",
                    "reason": "truncated",
                    "detail": "x",
                    "width": None,
                    "height": None,
                    "n_annotations": 0,
                    "shard_id": shard_id,
                }
            )
            continue
        label_map = np.zeros((20, 30), np.int32)
        label_map[:, image_id % 10 + 5 :] = 1
        for index, encoded in enumerate(encode_label_map(label_map, 2)):
            annotations.append(
                {
                    "id": image_id * 4096 + index,
                    "image_id": image_id,
                    "category_id": 1,
                    "category_name": "segment",
                    "segmentation_counts": encoded.counts,
                    "segmentation_size": [20, 30],
                    "area": encoded.area,
                    "bbox": encoded.bbox,
                    "iscrowd": 0,
                    "score": 0.9,
                    "file_name": f"mem://{image_id}.png",
                    "method": "diffseg",
                    "model": "tiny",
                    "resource_digest": None,
                    "run_id": "r",
                }
            )
        images.append(
            {
                "uri": f"mem://{image_id}.png",
                "image_id": image_id,
                "status": "labeled",
                "reason": None,
                "detail": None,
                "width": 30,
                "height": 20,
                "n_annotations": 2,
                "shard_id": shard_id,
            }
        )
    for name, table_schema, rows in (
        ("images.parquet", schema.IMAGES, images),
        ("annotations.parquet", schema.ANNOTATIONS, annotations),
    ):
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=table_schema), buffer)
        output.write_bytes(f"run/shards/{shard_id}/{name}", buffer.getvalue())


def test_merged_outputs_are_valid_coco_and_parquet(tmp_path):
    output = Folder(str(tmp_path / "out"))
    _write_shard(output, "b", [1, 2, 3], failed={2})
    _write_shard(output, "a", [4, 5], failed=set())
    categories = [{"id": 1, "name": "segment", "supercategory": "segment"}]
    counts = merge_outputs(output, ["b", "a"], categories, {"method": "diffseg"})
    assert counts == {"images": 5, "labeled": 4, "failed": 1, "annotations": 8,
                      "failure_reasons": {"truncated": 1}}

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(tmp_path / "out" / "coco.json"))
        assert sorted(coco.getImgIds()) == [1, 3, 4, 5]
        assert len(coco.getAnnIds()) == 8
        predictions = json.loads((tmp_path / "out" / "coco.json").read_text())["annotations"]
        results = coco.loadRes(predictions)
        evaluator = COCOeval(coco, results, iouType="segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert evaluator.stats[0] == 1.0  # the annotations evaluated against themselves

    images = pq.read_table(tmp_path / "out" / "images.parquet").to_pylist()
    assert [row["image_id"] for row in images] == [1, 2, 3, 4, 5]
    assert images[1]["status"] == "failed" and images[1]["reason"] == "truncated"
    annotations = pq.read_table(tmp_path / "out" / "annotations").to_pylist()
    assert len(annotations) == 8 and {row["method"] for row in annotations} == {"diffseg"}
    assert sorted(p.name for p in (tmp_path / "out" / "annotations").iterdir()) == [
        "part-000000-b.parquet",
        "part-000001-a.parquet",
    ]
