"""The method seam: a method's commands, help, API keywords, resource and provenance come from its
MethodSpec. The toy method (tests/toy_method/) has a command and a resource of its own and is
named nowhere outside its package."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import labeler
from labeler.cli import build_parser, main
from labeler.config import build_config
from labeler.errors import UserError
from labeler.io.folders import Folder
from labeler.methods.registry import BUILTIN, DEFAULT_METHOD, methods
from labeler.methods.spec import MethodContext
from labeler.output import parts
from labeler.runtime.plan import plan_run
from labeler.runtime.run_folder import RunFolder
from labeler.runtime.shard import ShardProcessor
from tests import toy_method
from tests.preflight_cases import make_input

REPO = Path(__file__).resolve().parent.parent


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def labeler_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "LABELER_METHODS": "tests.toy_method"}
    return subprocess.run([sys.executable, "-m", "labeler", *args], env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def names_file(folder: Path, text: str = "night\nday\n") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "names.txt"
    path.write_text(text)
    return path


def toy_config(tmp_path: Path, **table) -> labeler.config.JobConfig:
    return build_config({"toy": table}, {"method": "toy", "input": str(tmp_path / "in"),
                                         "output": str(tmp_path / "out")})


def test_a_plugin_methods_command_comes_from_its_spec(tmp_path):
    # through LABELER_METHODS, as a user adds a method: one subprocess, the rest in process
    shown = labeler_cli("toy", "info", "--names", str(names_file(tmp_path)))
    assert shown.returncode == 0, shown.stderr
    info = json.loads(shown.stdout)
    assert [c["name"] for c in info["categories"]] == ["night", "day"]
    assert info["names_digest"] == digest((tmp_path / "names.txt").read_bytes())


def test_the_toy_command_runs_and_refuses_in_one_line(tmp_path, capsys):
    assert main(["toy", "info"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "method": "toy", "names_digest": None,
        "categories": [{"id": 1, "name": "dark", "supercategory": "toy"},
                       {"id": 2, "name": "bright", "supercategory": "toy"}]}
    bad = names_file(tmp_path, "one\n")
    assert main(["toy", "info", "--names", str(bad)]) == 2
    assert capsys.readouterr().err == (f"labeler: error: [toy] names: {bad} must name two "
                                       "categories, one per line (found 1 lines)\n")


def test_every_methods_table_and_commands_are_in_the_help():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"slime", "diffews", "toy"} <= set(commands)  # toy: registered by the import above
    run_help = commands["run"].format_help()
    for spec in methods().values():
        assert f"[{spec.name}]" in run_help
    assert "settings left out come from the embedding set" in run_help
    assert "names: a file naming the two categories" in run_help
    assert DEFAULT_METHOD == BUILTIN[0].name


def test_the_resource_digest_enters_the_fingerprint_not_its_path(tmp_path):
    first = toy_config(tmp_path, names=str(names_file(tmp_path / "a")))
    moved = toy_config(tmp_path, names=str(names_file(tmp_path / "b")))
    changed = toy_config(tmp_path, names=str(names_file(tmp_path / "c", "night\nnoon\n")))
    assert first.fingerprint() == moved.fingerprint() != changed.fingerprint()
    assert toy_config(tmp_path).fingerprint() != first.fingerprint()
    with pytest.raises(UserError, match="does not exist"):
        toy_config(tmp_path, names=str(tmp_path / "missing.txt")).fingerprint()


def test_build_sees_a_narrow_context_and_provenance_carries_the_resource(tmp_path):
    config = toy_config(tmp_path, names=str(names_file(tmp_path)), threshold=100)
    context = config.method_context(device="cpu")
    assert context == MethodContext(settings=config.settings, model=None, device="cpu",
                                    dtype="auto", seed=0)
    segmenter = toy_method.SPEC.build(context)
    provenance = segmenter.provenance()
    assert provenance.method == "toy" and provenance.model is None
    assert provenance.resource_digest == digest(Path(config.settings.names).read_bytes())
    assert [c["name"] for c in toy_method.SPEC.categories(config.settings)] == ["night", "day"]


def test_annotations_record_the_methods_resource_digest(tmp_path):
    images = make_input(tmp_path / "in")
    config = toy_config(tmp_path, names=str(names_file(tmp_path)))
    segmenter = config.build_segmenter()
    run = RunFolder(Folder(str(tmp_path / "out")))
    shard = plan_run(run, [{"uri": str(p)} for p in sorted(images.iterdir())], 8)["shards"][0]
    ShardProcessor(segmenter, 2, None, "run-1").process(run.output, shard["shard_id"])
    rows = parts.read_part(run.output, parts.shard_part(shard["shard_id"], parts.ANNOTATIONS),
                           parts.ANNOTATIONS).to_pylist()
    assert {row["resource_digest"] for row in rows} == {segmenter.names.digest}
    assert {row["category_name"] for row in rows} == {"night", "day"}
    assert "resource_digest" in pq.read_schema(str(tmp_path / "out" / parts.shard_part(
        shard["shard_id"], parts.ANNOTATIONS))).names


def test_the_api_takes_the_methods_settings_as_keywords(tmp_path):
    segmenter = labeler.Labeler(method="toy", names=str(names_file(tmp_path)), threshold=100)
    result = segmenter.label(np.full((4, 6, 3), 120, np.uint8))
    assert result.category_names == ["day"]
    assert segmenter.config.batch_size == type(segmenter.config).model_fields["batch_size"].default
    with pytest.raises(UserError, match="embeddings"):
        labeler.Labeler(method="diffseg", model="tiny", embeddings="set.safetensors")
    with pytest.raises(UserError, match="threshold"):
        labeler.Labeler(method="toy", threshold=0)
