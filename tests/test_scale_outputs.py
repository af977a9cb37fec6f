"""Outputs whose cost follows the shards: COCO split across files, verify from run lengths and
record by record, status from sizes and stamps. Runs are synthesized and committed through the
real planner and commit (no model, no Ray), so these tests take seconds."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pycocotools.coco import COCO

import labeler
from labeler.io.folders import Folder
from labeler.output.exporters.base import ExportOptions
from labeler.output.exporters.export import export
from labeler.output.merge import merge_outputs
from labeler.runtime.commit import commit_shard
from labeler.runtime.run_folder import RunFolder
from labeler.runtime.status import describe_run
from labeler.runtime.verify import verify_output
from labeler.testing.committed_runs import CATEGORIES, mask_pool, synthesize_run
from tests.helpers import flat_regions_image

INFO = {"run_id": "synthetic", "method": "diffseg"}


@pytest.fixture(scope="module")
def pool():
    return mask_pool(4)


def _merged(tmp_path: Path, pool, max_annotations: int, n_images: int = 30) -> tuple[Path, dict]:
    out = tmp_path / "out"
    plan = synthesize_run(str(out), n_images, shard_size=6, pool=pool)
    merge_outputs(Folder(str(out)), [s["shard_id"] for s in plan["shards"]], CATEGORIES, INFO,
                  max_annotations)
    return out, plan


def _flip(path: Path, offset: int, keep_mtime: bool = False) -> None:
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    if keep_mtime:
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_a_large_run_is_split_into_coco_files_each_loading_in_pycocotools(tmp_path, pool):
    out, plan = _merged(tmp_path, pool, max_annotations=200)
    assert not (out / "coco.json").exists()
    index = json.loads((out / "coco" / "index.json").read_text())
    assert len(index["files"]) > 2
    ids = []
    for entry in index["files"]:
        coco = COCO(str(out / "coco" / entry["file"]))
        assert len(coco.getAnnIds()) == entry["annotations"] <= 200
        assert len(coco.getImgIds()) == entry["images"]
        annotation = coco.loadAnns(coco.getAnnIds()[:1])[0]
        assert coco.annToMask(annotation).sum() == annotation["area"]
        ids += coco.getAnnIds()
    assert len(ids) == len(set(ids)) == index["annotations"]
    assert index["images"] == 30
    assert pq.ParquetFile(out / "images.parquet").metadata.num_row_groups == 1  # not 1 per shard
    assert verify_output(str(out), sample=5, processes=1) == []
    assert describe_run(str(out)).splitlines()[0].endswith("complete")

    # merged again with a larger bound: one coco.json, the parts gone
    merge_outputs(Folder(str(out)), [s["shard_id"] for s in plan["shards"]], CATEGORIES, INFO)
    assert not (out / "coco").exists()
    assert len(COCO(str(out / "coco.json")).getAnnIds()) == index["annotations"]
    assert verify_output(str(out), processes=1) == []


def test_verify_catches_a_flipped_bit_in_a_coco_part(tmp_path, pool):
    out, _ = _merged(tmp_path, pool, max_annotations=200)
    part = out / "coco" / "part-00001.json"
    text = part.read_bytes()
    _flip(part, text.index(b'"counts": "') + len(b'"counts": "') + 3)
    json.loads(part.read_bytes())  # still valid JSON
    problems = verify_output(str(out), processes=1)
    assert problems == ["coco/part-00001.json: 1 annotations do not match any part row"]


def test_a_flipped_bit_in_a_shard_fragment_is_caught_by_status_and_verify(tmp_path, pool):
    out, plan = _merged(tmp_path, pool, max_annotations=200)
    shard = plan["shards"][2]["shard_id"]
    fragment = out / "run" / "shards" / shard / "coco_annotations.json"
    _flip(fragment, fragment.stat().st_size // 2)
    status = describe_run(str(out))
    assert "damaged" in status.splitlines()[0]
    assert f"damaged shard {shard}: part corrupt" in status
    assert verify_output(str(out), processes=1) == [
        (f"shard {shard}: part corrupt (run/shards/{shard}/coco_annotations.json: sha256 "
         "differs from the one recorded)")]


def test_status_hashes_only_parts_whose_stamp_changed_and_deep_hashes_all(tmp_path, pool):
    out, plan = _merged(tmp_path, pool, max_annotations=10_000)
    shard = plan["shards"][0]["shard_id"]
    part = out / "run" / "shards" / shard / "images.parquet"
    _flip(part, part.stat().st_size // 2, keep_mtime=True)  # e.g. bit rot: no new stamp
    assert describe_run(str(out)).splitlines()[0].endswith("complete")
    deep = describe_run(str(out), deep=True)
    assert f"damaged shard {shard}: part corrupt" in deep


def test_verify_checks_areas_and_boxes_from_the_run_lengths(tmp_path, pool):
    out, plan = _merged(tmp_path, pool, max_annotations=10_000)
    run = RunFolder(Folder(str(out)))
    shard = plan["shards"][1]["shard_id"]
    images = run.output.read_bytes(f"run/shards/{shard}/images.parquet")
    image_rows = pq.read_table(pa.BufferReader(images)).to_pylist()
    annotation_rows = pq.read_table(
        pa.BufferReader(run.output.read_bytes(f"run/shards/{shard}/annotations.parquet"))
    ).to_pylist()
    annotation_rows[0]["area"] += 1
    annotation_rows[3]["bbox"] = [0.0, 0.0, 1.0, 1.0]
    records = commit_shard(run, shard, image_rows, annotation_rows)  # recorded as committed
    stats = run.read_stats(shard)
    run.write_stats(shard, {**stats, "parts": records})
    merge_outputs(run.output, [s["shard_id"] for s in plan["shards"]], CATEGORIES, INFO)
    problems = verify_output(str(out), processes=1)
    first, fourth = annotation_rows[0], annotation_rows[3]
    assert problems[0] == (f"annotation {first['id']} (shard {shard}): RLE covers "
                           f"{first['area'] - 1} pixels, area says {first['area']}")
    assert problems[1].startswith(f"annotation {fourth['id']} (shard {shard}): RLE box ")
    assert problems[1].endswith("bbox says [0.0, 0.0, 1.0, 1.0]")
    assert len(problems) == 2


def test_shards_committed_without_fragments_still_merge_to_the_same_files(tmp_path, pool):
    out, plan = _merged(tmp_path, pool, max_annotations=200)
    before = {p.name: p.read_bytes() for p in (out / "coco").iterdir()}
    run = RunFolder(Folder(str(out)))
    for shard in plan["shards"][::2]:  # as an older labeler committed them
        shard_id = shard["shard_id"]
        for name in ("coco_images.json", "coco_annotations.json"):
            (out / "run" / "shards" / shard_id / name).unlink()
        stats = run.read_stats(shard_id)
        for name in ("coco_images.json", "coco_annotations.json"):
            del stats["parts"][name]
        run.write_stats(shard_id, stats)
    merge_outputs(run.output, [s["shard_id"] for s in plan["shards"]], CATEGORIES, INFO, 200)
    assert {p.name: p.read_bytes() for p in (out / "coco").iterdir()} == before
    assert not (out / "run" / "merge").exists() or not list((out / "run" / "merge").iterdir())
    assert verify_output(str(out), processes=1) == []


def test_export_coco_rle_takes_the_same_bound(tmp_path, pool):
    out, _ = _merged(tmp_path, pool, max_annotations=200)  # a split output: no coco.json
    summary = export(str(out), "coco-rle", str(tmp_path / "export"),
                     options=ExportOptions(coco_max_annotations=150))
    assert summary.files == ["coco/index.json"]
    index = json.loads((tmp_path / "export" / "coco" / "index.json").read_text())
    counts = [len(COCO(str(tmp_path / "export" / "coco" / e["file"])).getAnnIds())
              for e in index["files"]]
    assert counts == [e["annotations"] for e in index["files"]] and max(counts) <= 150
    assert sum(counts) == summary.annotations


def test_a_run_splits_its_coco_output_and_a_new_bound_merges_again(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    picture, _ = flat_regions_image(64, 64, "quadrants")
    for name in "abcd":
        Image.fromarray(picture).save(images / f"{name}.png")
    output = tmp_path / "out"
    job = {"input": str(images), "output": str(output), "model": "tiny", "shard_size": 2,
           "device": "cpu", "coco_max_annotations": 1}
    summary = labeler.run(job, executor="local")
    index = json.loads((output / "coco" / "index.json").read_text())
    assert len(index["files"]) == 2 and not (output / "coco.json").exists()  # one per shard
    assert index["annotations"] == summary.annotations > 2
    for entry in index["files"]:
        assert len(COCO(str(output / "coco" / entry["file"])).getAnnIds()) == entry["annotations"]
    assert verify_output(str(output), processes=1) == []
    assert describe_run(str(output)).splitlines()[0].endswith("complete")

    labeler.run({**job, "coco_max_annotations": 1000}, executor="local")  # nothing relabeled
    assert not (output / "coco").exists()
    assert len(COCO(str(output / "coco.json")).getAnnIds()) == summary.annotations
    assert verify_output(str(output), processes=1) == []


def test_images_parquet_is_streamed_in_row_groups_with_small_tables_compacted(
        tmp_path, pool, monkeypatch):
    from labeler.output import merge
    monkeypatch.setattr(merge, "IMAGE_ROW_GROUP", 10)
    monkeypatch.setattr(merge, "COMPACT_TABLES", 4)
    held = []
    add = merge._RowGroups.add

    def watched(self, table):
        add(self, table)
        held.append(len(self.pending))

    monkeypatch.setattr(merge._RowGroups, "add", watched)
    out = tmp_path / "out"
    plan = synthesize_run(str(out), 23, shard_size=1, pool=pool)
    counts = merge_outputs(Folder(str(out)), [s["shard_id"] for s in plan["shards"]],
                           CATEGORIES, INFO)
    assert max(held) < 4  # never more than COMPACT_TABLES small tables at once
    merged = pq.ParquetFile(out / "images.parquet")
    assert [merged.metadata.row_group(i).num_rows
            for i in range(merged.metadata.num_row_groups)] == [10, 10, 3]
    assert merged.read().column("image_id").to_pylist() == list(range(1, 24))  # plan order
    assert counts["images"] == counts["labeled"] == 23 and counts["failed"] == 0
    assert verify_output(str(out), processes=1) == []


def test_a_part_written_before_a_column_existed_reads_it_as_nulls(tmp_path):
    from labeler.output import parts, schema
    folder = Folder(str(tmp_path))
    older = pa.schema([field for field in schema.IMAGES if field.name != "retryable"]
                      + [pa.field("gone", pa.string())])
    pq.write_table(pa.table({"uri": ["a"], "image_id": [3], "status": ["labeled"],
                             "gone": ["x"]}, schema=pa.schema(
        [older.field(name) for name in ("uri", "image_id", "status", "gone")])),
        str(tmp_path / "part.parquet"))
    table = parts.read_part(folder, "part.parquet", parts.IMAGES)
    assert table.schema.equals(schema.IMAGES)
    assert table.to_pylist()[0] == {**{field.name: None for field in schema.IMAGES},
                                    "uri": "a", "image_id": 3, "status": "labeled"}
