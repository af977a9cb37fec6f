"""Input identity (issue 26, item 5): what version of each input was labeled, and relabelling
the images whose input changed since.

The fault: an input overwritten between the plan and the read was labeled from its new bytes,
and a re-run after restoring it said "no new images" while ``verify`` said sound. Here the
overwrite is triggered by an event (the plan has just been written), on a real S3 server and on
a local folder, with the in-process executor.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

import labeler
from labeler.cli import main
from labeler.io.identity import comparable, content_identity
from labeler.io.listing import iter_inputs
from labeler.io.reading import read_many, with_identities
from labeler.runtime import job
from labeler.runtime.listing_diff import Planned, diff_listing
from labeler.runtime.verify import verify_output
from tests.helpers import flat_regions_image

NAMES = ("a.png", "b.png", "c.png")


def _png(layout: str, height: int, width: int) -> bytes:
    picture, _ = flat_regions_image(height, width, layout)
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, "PNG")
    return buffer.getvalue()


ORIGINAL = _png("quadrants", 64, 64)
REPLACEMENT = _png("halves", 48, 80)


class LocalInput:
    """A folder on the local disk."""

    def __init__(self, root: Path) -> None:
        self.root = root / "images"
        self.root.mkdir()
        self.uri = str(self.root)
        self.outputs = root

    def put(self, name: str, data: bytes) -> None:
        (self.root / name).write_bytes(data)

    def output(self, name: str) -> str:
        return str(self.outputs / name)

    def uri_of(self, name: str) -> str:
        return str(self.root / name)


class S3Input:
    """A folder (prefix) on the session's S3 server."""

    def __init__(self, server, bucket: str) -> None:
        server.create_bucket(bucket)
        self.fs = server.filesystem()
        self.bucket = bucket
        self.uri = f"s3://{bucket}/images"

    def put(self, name: str, data: bytes) -> None:
        self.fs.pipe_file(f"{self.bucket}/images/{name}", data)
        self.fs.invalidate_cache()

    def output(self, name: str) -> str:
        return f"s3://{self.bucket}/{name}"

    def uri_of(self, name: str) -> str:
        return f"{self.uri}/{name}"


@pytest.fixture(params=["s3", "folder"])
def collection(request, tmp_path):
    if request.param == "s3":
        server = request.getfixturevalue("s3_env")
        source = S3Input(server, f"identity-{len(server.env)}-{tmp_path.name[-20:].lower()}"
                         .replace("_", "-"))
    else:
        source = LocalInput(tmp_path)
    for name in NAMES:
        source.put(name, ORIGINAL if name != "c.png" else _png("halves", 64, 64))
    return source


def _run(source, output: str, **settings) -> labeler.runtime.job.RunSummary:
    return labeler.run({"input": source.uri, "output": output, "model": "tiny",
                        "shard_size": 2, "device": "cpu", **settings}, executor="local")


def _images(output: str) -> dict[str, dict]:
    folder = labeler.io.folders.Folder(output)
    with folder.open("images.parquet") as handle:
        rows = pq.read_table(handle).to_pylist()
    return {row["uri"].rsplit("/", 1)[1]: row for row in rows}


def _coco(output: str) -> dict:
    folder = labeler.io.folders.Folder(output)
    return json.loads(folder.read_bytes("coco.json"))


def _labels(output: str, name: str) -> list[tuple]:
    """The annotations of one image, without its ids: what the model made of its bytes."""
    coco = _coco(output)
    image_id = _images(output)[name]["image_id"]
    return [(a["category_id"], a["segmentation"], a["area"], a["bbox"], a["score"])
            for a in coco["annotations"] if a["image_id"] == image_id]


def test_an_input_replaced_between_plan_and_read_is_recorded_and_relabeled_once_restored(
        collection, monkeypatch):
    planned = job.plan_run

    def plan_then_replace(*args, **kwargs):
        plan = planned(*args, **kwargs)
        collection.put("b.png", REPLACEMENT)  # the event: the plan is written, nothing read
        return plan

    monkeypatch.setattr(job, "plan_run", plan_then_replace)
    output = collection.output("out")
    first = _run(collection, output)
    monkeypatch.undo()
    assert first.complete and first.labeled == 3
    ids = {name: row["image_id"] for name, row in _images(output).items()}

    # what was read is recorded: the replacement, with its identity and its size
    replaced = _images(output)["b.png"]
    assert (replaced["width"], replaced["height"]) == (80, 48)
    current = {ref.uri: ref.identity for ref in iter_inputs(collection.uri)}
    assert replaced["input_identity"] == current[collection.uri_of("b.png")]
    assert all(row["input_identity"] for row in _images(output).values())
    stats = labeler.io.folders.Folder(output).read_json(
        f"run/stats/{replaced['shard_id']}.json")
    assert stats["inputs_changed_since_plan"] == 1
    assert _labels(output, "b.png") != _labels(output, "a.png")  # a.png holds the original
    assert verify_output(output, inputs=True) == []  # the output describes the input as it is

    collection.put("b.png", ORIGINAL)  # restored
    problems = verify_output(output, inputs=True)
    assert len(problems) == 1 and "1 images changed since they were labeled" in problems[0]
    assert "b.png" in problems[0]
    assert verify_output(output) == []  # without --inputs the output itself is sound

    untouched = _run(collection, output, verify_inputs=False)
    assert untouched.changed_images == 0 and untouched.shards_processed == 0

    again = _run(collection, output)  # the default: the listing gives identities for free
    assert again.complete and again.changed_images == 1 and again.new_images == 0
    assert again.shards_processed == 1  # only the shard holding b.png
    rows = _images(output)
    assert {name: row["image_id"] for name, row in rows.items()} == ids
    assert (rows["b.png"]["width"], rows["b.png"]["height"]) == (64, 64)
    now = {ref.uri: ref.identity for ref in iter_inputs(collection.uri)}
    assert rows["b.png"]["input_identity"] == now[collection.uri_of("b.png")]
    # the superseded annotations are replaced, not added to: b.png is labeled as a.png is
    assert _labels(output, "b.png") == _labels(output, "a.png")
    coco = _coco(output)
    assert len(coco["annotations"]) == sum(row["n_annotations"] for row in rows.values())
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
    assert verify_output(output) == [] and verify_output(output, inputs=True) == []

    settled = _run(collection, output)
    assert settled.changed_images == 0 and settled.shards_processed == 0


def test_a_manifest_is_compared_with_verify_inputs_only(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.png").write_bytes(ORIGINAL)
    (images / "b.png").write_bytes(_png("halves", 64, 64))
    manifest = tmp_path / "list.txt"
    manifest.write_text(f"{images / 'a.png'}\n{images / 'b.png'}\n")
    output = str(tmp_path / "out")
    job_settings = {"input": str(manifest), "output": output, "model": "tiny", "shard_size": 1,
                    "device": "cpu"}
    first = labeler.run(job_settings, executor="local")
    assert first.labeled == 2
    (images / "b.png").write_bytes(ORIGINAL)  # replaced after it was labeled

    by_default = labeler.run(job_settings, executor="local")  # a manifest lists names only
    assert by_default.changed_images == 0 and by_default.shards_processed == 0
    assert main(["verify", output]) == 0
    assert main(["verify", output, "--inputs"]) == 1  # a stat per entry finds it
    assert "1 images changed since they were labeled" in capsys.readouterr().out

    verified = labeler.run({**job_settings, "verify_inputs": True}, executor="local")
    assert verified.changed_images == 1 and verified.shards_processed == 1
    assert _labels(output, "b.png") == _labels(output, "a.png")
    assert main(["verify", output, "--inputs"]) == 0


def test_identities_of_entries_the_listing_does_not_give_are_looked_up(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in NAMES:
        (images / name).write_bytes(ORIGINAL)
    manifest = tmp_path / "list.txt"
    manifest.write_text("\n".join(str(images / name) for name in NAMES))
    refs = list(iter_inputs(str(manifest)))
    assert [ref.identity for ref in refs] == [None] * 3  # a manifest lists names only
    looked_up = list(with_identities(refs))
    read = [identity for _, _, identity in read_many(refs)]
    assert [ref.identity for ref in looked_up] == read  # a stat gives what a read records
    assert all(identity.startswith("mtime:") for identity in read)

    memory = [f"memory://identity/{name}" for name in NAMES]
    for uri, data in zip(memory, (ORIGINAL, REPLACEMENT, ORIGINAL)):
        labeler.io.folders.Folder("memory://identity").write_bytes(uri.rsplit("/", 1)[1], data)
    refs = [labeler.io.refs.InputRef(uri=uri) for uri in memory]
    assert [ref.identity for ref in with_identities(refs)] == [
        content_identity(ORIGINAL), content_identity(REPLACEMENT), content_identity(ORIGINAL)]


def test_the_listing_diff_reports_changed_identities_of_one_kind_only(tmp_path):
    planned = [Planned("s3://b/1.png", "etag:one", "s1"), Planned("s3://b/2.png", "etag:two", "s1"),
               Planned("s3://b/3.png", None, "s2"), Planned("s3://b/4.png", "sha256:x", "s2"),
               Planned("s3://b/5.png", "etag:five", "s3")]
    listing = [{"uri": "s3://b/1.png", "identity": "etag:one"},
               {"uri": "s3://b/2.png", "identity": "etag:TWO"},
               {"uri": "s3://b/3.png", "identity": "etag:three"},  # nothing recorded
               {"uri": "s3://b/4.png", "identity": "etag:four"},  # another kind
               {"uri": "s3://b/5.png"},  # the listing gives none
               {"uri": "s3://b/6.png", "identity": "etag:six"}]
    diff = diff_listing(iter(planned), iter(listing), len(planned), str(tmp_path))
    assert diff.changed == 1 and diff.changed_shards == {"s1"}
    assert diff.changed_examples == ["s3://b/2.png (etag:two -> etag:TWO)"]
    assert [item["uri"] for item in diff.new_items()] == ["s3://b/6.png"]
    assert comparable("etag:a", "etag:b") and not comparable("etag:a", "mtime:1.0:size:2")
