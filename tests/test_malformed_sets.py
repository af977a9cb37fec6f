"""Malformed SLiMe embedding sets: exit 2 and one line in `labeler slime info` and in
`labeler run --method slime`, never a traceback."""

from __future__ import annotations

import contextlib
import io
import json
import struct

import pytest
import torch

from labeler.cli import main
from labeler.methods.slime.embedding_set import FORMAT, FORMAT_VERSION, METADATA_KEY, EmbeddingSet

GOOD_RECORD = {
    "format": FORMAT, "format_version": FORMAT_VERSION, "classes": ["background", "a", "b"],
    "model": "tiny", "model_fingerprint": None, "prompt": "part part part",
    "layers": {"cross": ["up/cross/16"], "self": ["up/self/64"]}, "channel_order": "rgb",
    "inference": {"timestep": 100}, "fit": {},
}


def safetensors(header, data: bytes = b"") -> bytes:
    blob = json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + data


def embedding_file(record=None, shape=(2, 8), offsets=None, data=None) -> bytes:
    data = bytes(4 * shape[0] * shape[1]) if data is None else data
    entry = {"dtype": "F32", "shape": list(shape),
             "data_offsets": offsets or [0, 4 * shape[0] * shape[1]]}
    metadata = {METADATA_KEY: json.dumps(GOOD_RECORD if record is None else record)}
    return safetensors({"__metadata__": metadata, "embeddings": entry}, data)


def without(key: str) -> dict:
    return {name: value for name, value in GOOD_RECORD.items() if name != key}


MALFORMED = {
    "json_list_header": safetensors([1, 2, 3]),
    "metadata_not_an_object": safetensors({"__metadata__": ["x"]}),
    "missing_classes": embedding_file(without("classes")),
    "classes_not_a_list": embedding_file({**GOOD_RECORD, "classes": "background,a"}),
    "offsets_past_the_data": embedding_file(offsets=[0, 10**9]),
    "huge_shape": embedding_file(shape=(2, 10**12), data=b""),
    "shape_not_matching_classes": embedding_file(shape=(5, 8)),
    "bad_layer_selector": embedding_file({**GOOD_RECORD, "layers": {"cross": ["up/cross/sixteen"],
                                                                     "self": ["up/self/64"]}}),
    "layers_missing_self": embedding_file({**GOOD_RECORD, "layers": {"cross": ["up/cross/16"]}}),
    "bad_inference_value": embedding_file({**GOOD_RECORD, "inference": {"timestep": 5000}}),
    "unknown_inference_key": embedding_file({**GOOD_RECORD, "inference": {"timesteps": 10}}),
    "bad_channel_order": embedding_file({**GOOD_RECORD, "channel_order": "gbr"}),
    "nan_embeddings": embedding_file(data=struct.pack("<f", float("nan")) * 16),
}


def run_cli(*args: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(list(args))
    return code, err.getvalue()


def test_the_well_formed_file_of_these_tests_loads():
    loaded = EmbeddingSet.from_bytes(embedding_file())
    assert loaded.classes == ("background", "a", "b") and tuple(loaded.embeddings.shape) == (2, 8)


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_slime_info_refuses_a_malformed_set_in_one_line(tmp_path, case):
    path = tmp_path / f"{case}.safetensors"
    path.write_bytes(MALFORMED[case])
    code, err = run_cli("slime", "info", str(path))
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("labeler: error: ") and "Traceback" not in err
    assert str(path) in err


@pytest.mark.parametrize("case", ["json_list_header", "missing_classes", "offsets_past_the_data",
                                  "huge_shape", "bad_layer_selector", "bad_inference_value"])
def test_run_refuses_a_malformed_set_before_anything_is_written(tmp_path, case):
    path = tmp_path / f"{case}.safetensors"
    path.write_bytes(MALFORMED[case])
    (tmp_path / "in").mkdir()
    code, err = run_cli("run", "--method", "slime", "--embeddings", str(path), "--model", "tiny",
                        "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                        "--no-progress")
    assert code == 2, err
    assert err.count("\n") == 1 and "--embeddings" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_a_set_saved_by_labeler_still_round_trips(tmp_path):
    original = EmbeddingSet(embeddings=torch.randn(2, 8), classes=("bg", "x", "y"), model="tiny",
                            model_fingerprint="abc", prompt="part part part",
                            layers={"cross": ["up/cross/16", "up/cross/32:2"],
                                    "self": ["up/self/64"]},
                            inference={"timestep": 100, "patch_threshold": None})
    loaded = EmbeddingSet.from_bytes(original.to_bytes())
    assert torch.equal(loaded.embeddings, original.embeddings)
    assert loaded.metadata() == original.metadata()
