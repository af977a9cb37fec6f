"""Method resources go through the storage layer (labeler.io): SLiMe embedding sets, official
SLiMe checkpoints, DiffewS support banks, on object stores and in memory like on local disks."""

from __future__ import annotations

import io
import json

import fsspec
import pytest
import torch

from labeler.cli import main
from labeler.config import build_config
from labeler.errors import NotFoundError, UserError
from labeler.io.files import split_uri, write_file
from labeler.io.reading import read_file
from labeler.methods.diffews.attention import SupportBank
from labeler.methods.slime.algorithm import DEFAULT_LAYERS
from labeler.methods.slime.embedding_set import (
    EmbeddingSet,
    default_prompt,
    read_official_embeddings,
)
from labeler.methods.slime.method import SlimeSettings, load_set, set_sha256


def embedding_set() -> EmbeddingSet:
    generator = torch.Generator().manual_seed(3)
    return EmbeddingSet(embeddings=torch.randn(2, 32, generator=generator),
                        classes=("background", "red", "green"), model="tiny",
                        model_fingerprint=None, prompt=default_prompt(3),
                        layers={kind: list(s) for kind, s in DEFAULT_LAYERS.items()})


def test_split_uri_names_the_folder_and_the_file():
    assert split_uri("s3://bucket/sets/a.safetensors") == ("s3://bucket/sets", "a.safetensors")
    assert split_uri("/tmp/x/a.bin") == ("/tmp/x", "a.bin")
    assert split_uri("a.bin") == (".", "a.bin")


def test_write_file_replaces_a_local_file_whole_and_leaves_no_staging(tmp_path):
    target = tmp_path / "deep" / "state.bin"
    write_file(str(target), b"first")
    write_file(str(target), b"second")
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["state.bin"]


def test_an_embedding_set_round_trips_through_s3_and_is_applied_from_there(s3_env, capsys):
    s3_env.create_bucket("sets")
    uri = "s3://sets/fits/parts.safetensors"
    original = embedding_set()
    digest = original.save(uri)
    loaded = EmbeddingSet.load(uri)
    torch.testing.assert_close(loaded.embeddings, original.embeddings)
    assert loaded.sha256 == digest == original.sha256
    settings = SlimeSettings(embeddings=uri)
    assert load_set(settings).classes == original.classes
    assert set_sha256(uri)[:16] == digest
    config = build_config({}, {"method": "slime", "input": "s3://sets/in", "output": "s3://sets/out",
                               "embeddings": uri})
    assert config.output_settings()["slime"]["embedding_set_sha256"][:16] == digest
    assert main(["slime", "info", uri]) == 0
    assert json.loads(capsys.readouterr().out)["classes"] == ["background", "red", "green"]
    with pytest.raises(UserError, match="does not exist"):
        load_set(SlimeSettings(embeddings="s3://sets/fits/missing.safetensors"))
    with pytest.raises(NotFoundError):
        EmbeddingSet.load("s3://sets/fits/missing.safetensors")


def test_official_checkpoints_are_read_from_any_filesystem():
    fs = fsspec.filesystem("memory")
    for index in range(2):
        buffer = io.BytesIO()
        torch.save(torch.full((1, 1, 8), float(index)), buffer)
        fs.pipe(f"/official-set/embedding_{index}.pth", buffer.getvalue())
    rows = read_official_embeddings("memory://official-set")
    assert rows.shape == (2, 8) and rows[1].eq(1).all()
    with pytest.raises(UserError, match="is not a folder of embedding_i.pth files"):
        read_official_embeddings("memory://official-set/embedding_0.pth")


def test_a_support_bank_is_written_and_read_through_the_storage_layer():
    bank = SupportBank()
    bank.keys["down.0"] = torch.randn(1, 2, 4, 8)
    bank.values["down.0"] = torch.randn(1, 2, 4, 8)
    bank.save("memory://banks/cache/one.safetensors", {"class": "red"})
    assert read_file("memory://banks/cache/one.safetensors")[:8]  # one whole object
    loaded = SupportBank.load("memory://banks/cache/one.safetensors")
    torch.testing.assert_close(loaded.keys["down.0"], bank.keys["down.0"])
    torch.testing.assert_close(loaded.values["down.0"], bank.values["down.0"])
