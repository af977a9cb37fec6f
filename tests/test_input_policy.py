"""The input policy: a manifest entry outside the allowed protocols or the input's folder is a
failed image with a clear reason, never read and never a crash."""

from __future__ import annotations

import io
from typing import ClassVar

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from labeler.config import build_config
from labeler.errors import UserError
from labeler.io.folders import Folder
from labeler.io.listing import iter_inputs
from labeler.io.policy import OUTSIDE_INPUT, PROTOCOL_NOT_ALLOWED, InputPolicy
from labeler.io.refs import InputRef
from labeler.methods.base import ImageLabels, MethodProvenance
from labeler.runtime.plan import plan_run
from labeler.runtime.run_folder import RunFolder
from labeler.runtime.shard import ShardProcessor
from labeler.timing import StageTimer


def test_the_default_policy_is_the_inputs_protocol_and_folder(tmp_path):
    (tmp_path / "in").mkdir()
    manifest = tmp_path / "in" / "list.txt"
    manifest.write_text("")
    policy = InputPolicy.for_input(str(manifest))
    assert policy.refusal(InputRef(str(tmp_path / "in" / "a.png"))) is None
    assert policy.refusal(InputRef(str(tmp_path / "in" / ".." / "b.png")))[0] == OUTSIDE_INPUT
    assert policy.refusal(InputRef("/etc/passwd"))[0] == OUTSIDE_INPUT
    assert policy.refusal(InputRef("http://10.0.0.1/x.png"))[0] == PROTOCOL_NOT_ALLOWED
    assert policy.refusal(InputRef("s3://b/x.png"))[0] == PROTOCOL_NOT_ALLOWED

    s3 = InputPolicy.for_input("s3a://bucket/list.txt")
    assert s3.refusal(InputRef("s3://other/x.png")) is None
    assert s3.refusal(InputRef("/etc/passwd"))[0] == PROTOCOL_NOT_ALLOWED
    assert s3.refusal(InputRef("simplecache::https://h/x.png"))[0] == PROTOCOL_NOT_ALLOWED


def test_a_symlink_out_of_the_input_folder_is_outside_it(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "secret.png").write_bytes(b"x")
    (tmp_path / "in" / "link.png").symlink_to(tmp_path / "secret.png")
    policy = InputPolicy.for_input(str(tmp_path / "in"))
    assert policy.refusal(InputRef(str(tmp_path / "in" / "link.png")))[0] == OUTSIDE_INPUT


def test_allow_protocols_replaces_the_default():
    policy = InputPolicy.for_input("/data/list.txt", ["file", "HTTPS"])
    assert policy.refusal(InputRef("https://h/x.png")) is None
    assert policy.refusal(InputRef("/anywhere/x.png")) is None
    assert policy.refusal(InputRef("http://h/x.png"))[0] == PROTOCOL_NOT_ALLOWED


def test_allow_protocols_is_validated_and_left_out_of_default_fingerprints(tmp_path):
    base = {"input": str(tmp_path), "output": str(tmp_path / "o"), "model": "tiny"}
    with pytest.raises(UserError, match="allow_protocols"):
        build_config({}, {**base, "allow_protocols": ["s3://"]})
    assert "allow_protocols" not in build_config({}, base).output_settings()
    assert build_config({}, {**base, "allow_protocols": ["s3"]}).output_settings()[
        "allow_protocols"] == ["s3"]


class OneLabel:
    categories: ClassVar[list[dict]] = [{"id": 1, "name": "all", "supercategory": "x"}]

    def __init__(self) -> None:
        self.timer = StageTimer()
        self.device = "cpu"
        self.images = 0

    def provenance(self) -> MethodProvenance:
        return MethodProvenance(method="test", model="none")

    def label(self, images: list[np.ndarray]) -> list[ImageLabels]:
        self.images += len(images)
        return [ImageLabels(np.zeros(im.shape[:2], np.int32), np.array([1]), np.ones(1))
                for im in images]


def test_refused_manifest_entries_are_failed_images_never_read(tmp_path):
    inside = tmp_path / "in"
    inside.mkdir()
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (9, 9, 9)).save(buffer, "PNG")
    (inside / "ok.png").write_bytes(buffer.getvalue())
    (tmp_path / "outside.png").write_bytes(buffer.getvalue())
    manifest = inside / "list.txt"
    manifest.write_text(f"ok.png\n{tmp_path / 'outside.png'}\n../outside.png\n"
                        "http://127.0.0.1:9/x.png\n")
    run = RunFolder(Folder(str(tmp_path / "out")))
    items = [{"uri": ref.uri, "ref": ref.to_dict()} for ref in iter_inputs(str(manifest))]
    shard_id = plan_run(run, items, shard_size=8)["shards"][0]["shard_id"]
    segmenter = OneLabel()
    stats = ShardProcessor(segmenter, 2, None, "run",
                           policy=InputPolicy.for_input(str(manifest))).process(run.output, shard_id)
    with run.output.open(run.shard_part(shard_id, "images.parquet")) as handle:
        rows = pq.read_table(handle).to_pylist()
    assert [row["reason"] for row in rows] == [None, OUTSIDE_INPUT, OUTSIDE_INPUT,
                                               PROTOCOL_NOT_ALLOWED]
    assert "--allow-protocols" in rows[3]["detail"]
    assert stats["labeled"] == 1 and segmenter.images == 1
