"""Safetensors headers are checked before any reader trusts them (issue 26): an absurd header
length (2^62) or a malformed header in a DiffewS checkpoint, or in any model folder, ends in one
line and exit 2, never a traceback, and before the run writes anything; a damaged cached support
bank is computed again."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save

from labeler.cli import main
from labeler.errors import UserError
from labeler.methods.annotations import load_annotated
from labeler.methods.diffews.attention import SupportBank, install_kv_fusion
from labeler.methods.diffews.model import load_diffews_backbone, read_support_conv
from labeler.methods.diffews.support import (
    BankSettings,
    bank_path,
    build_banks,
    class_supports,
    empty_context,
)
from labeler.models.safetensors_header import (
    MalformedSafetensors,
    check_file,
    check_folder,
    parse_header,
)
from tests.diffews_helpers import support_folder, tiny_checkpoint


def blob(header, data: bytes = b"", length: int | None = None) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + data


F32_2x2 = {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}

MALFORMED = {
    "absurd_length": blob({"t": F32_2x2}, bytes(16), length=2**62),
    "length_past_the_file": blob({"t": F32_2x2}, bytes(16), length=10_000),
    "too_short": b"\x01\x02",
    "not_json": blob(b"{not json at all}"),
    "not_utf8": blob(b'{"\xff\xfe": 1}'),
    "json_list": blob([1, 2, 3]),
    "metadata_not_an_object": blob({"__metadata__": ["x"]}),
    "metadata_value_not_a_string": blob({"__metadata__": {"format": 3}}),
    "entry_not_an_object": blob({"t": "tensor"}),
    "unknown_dtype": blob({"t": {**F32_2x2, "dtype": "F128"}}, bytes(16)),
    "negative_dimension": blob({"t": {**F32_2x2, "shape": [-2, 2]}}, bytes(16)),
    "boolean_dimension": blob({"t": {**F32_2x2, "shape": [True, 2]}}, bytes(16)),
    "offsets_past_the_data": blob({"t": {**F32_2x2, "data_offsets": [0, 10**15]}}, bytes(16)),
    "offsets_not_matching_the_shape": blob({"t": {**F32_2x2, "shape": [10**9, 10**9]}}, bytes(16)),
    "offsets_reversed": blob({"t": {**F32_2x2, "data_offsets": [16, 0]}}, bytes(16)),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_header_is_one_user_error_naming_the_file(tmp_path, case):
    path = tmp_path / f"{case}.safetensors"
    path.write_bytes(MALFORMED[case])
    with pytest.raises(MalformedSafetensors) as caught:
        check_file(path)
    assert isinstance(caught.value, UserError)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_files_written_by_safetensors_pass_and_their_header_is_returned(tmp_path):
    tensors = {"a": torch.zeros(3, 4), "b": torch.ones(2, dtype=torch.bfloat16),
               "c": torch.zeros(0, 5, dtype=torch.int64), "d": torch.tensor(True)}
    data = save(tensors, metadata={"format": "pt"})
    header = parse_header(data, len(data))
    assert header["__metadata__"] == {"format": "pt"} and header["a"]["shape"] == [3, 4]
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "w.safetensors").write_bytes(data)
    (tmp_path / "x.safetensors").write_bytes(data)
    assert check_folder(tmp_path) == 2


@pytest.fixture(scope="module")
def world(tmp_path_factory, labeler_cache):
    root = tmp_path_factory.mktemp("headers")
    (root / "in").mkdir()
    from PIL import Image

    Image.new("RGB", (64, 64), (200, 10, 10)).save(root / "in" / "a.png")
    return {"root": root, "checkpoint": tiny_checkpoint(root / "ckpt"),
            "support": support_folder(root / "support")}


def damaged_copy(world, tmp_path: Path, component: str, damage: str) -> Path:
    """A copy of the tiny DiffewS checkpoint whose ``component`` weights have ``damage``."""
    copy = tmp_path / f"ckpt-{component}-{damage}"
    shutil.copytree(world["checkpoint"], copy)
    path = next((copy / component).glob("*.safetensors"))
    data = bytearray(path.read_bytes())
    if damage == "absurd_length":
        data[:8] = struct.pack("<Q", 2**62)
    else:  # the header's first tensor entry claims bytes past the end of the file
        length = struct.unpack("<Q", data[:8])[0]
        header = json.loads(data[8 : 8 + length])
        name = next(key for key in header if key != "__metadata__")
        header[name]["data_offsets"][1] += len(data)
        data = bytearray(blob(header, bytes(data[8 + length :])))
    path.write_bytes(bytes(data))
    return copy


def run(*args: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(list(args))
    return code, err.getvalue()


@pytest.mark.parametrize("component", ["unet", "vae", "text_encoder"])
@pytest.mark.parametrize("damage", ["absurd_length", "offsets_past_the_data"])
def test_a_run_refuses_a_damaged_checkpoint_in_one_line_before_writing(world, tmp_path, component,
                                                                       damage):
    model = damaged_copy(world, tmp_path, component, damage)
    out = tmp_path / "out"
    code, err = run("run", "--method", "diffews", "--model", str(model), "--support-images",
                    str(world["support"]), "--support-masks", str(world["support"]), "--classes",
                    "background,red,green", "--input", str(world["root"] / "in"), "--output",
                    str(out), "--executor", "local", "--no-progress")
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("labeler: error: --model: ") and "Traceback" not in err
    assert f"{model}/{component}/" in err
    assert not out.exists()


def test_the_worker_side_loaders_refuse_it_too(world, tmp_path):
    """What `labeler run`'s pre-flight does not guard (the API, a worker, training) is refused by
    the loaders themselves, with the same error."""
    model = damaged_copy(world, tmp_path, "unet", "absurd_length")
    with pytest.raises(MalformedSafetensors, match="bad header length"):
        read_support_conv(model / "unet")
    vae_damaged = damaged_copy(world, tmp_path, "vae", "offsets_past_the_data")
    with pytest.raises(MalformedSafetensors, match="data offsets"):
        load_diffews_backbone(str(vae_damaged), device="cpu")


def test_import_and_train_refuse_a_damaged_unet_in_one_line(world, tmp_path):
    model = damaged_copy(world, tmp_path, "unet", "absurd_length")
    code, err = run("diffews", "import", "--base", "tiny", "--unet", str(model / "unet"),
                    "--output", str(tmp_path / "imported"))
    assert code == 2 and err.count("\n") == 1 and "bad header length" in err, err
    assert not (tmp_path / "imported").exists()
    code, err = run("diffews", "train", "--images", str(world["support"]), "--masks",
                    str(world["support"]), "--classes", "background,red,green", "--model",
                    str(model), "--output", str(tmp_path / "trained"), "--steps", "1",
                    "--device", "cpu")
    assert code == 2 and err.count("\n") == 1 and "bad header length" in err, err


def test_a_damaged_cached_support_bank_is_computed_again_and_replaced(world, tmp_path, caplog):
    backbone, weights = load_diffews_backbone(str(world["checkpoint"]), device="cpu")
    fusion = install_kv_fusion(backbone.unet)
    context = empty_context(backbone)
    supports = class_supports(load_annotated(str(world["support"]), str(world["support"]), 3),
                              ("background", "red", "green"))
    settings = BankSettings(64, 2, True, "float32")
    first = build_banks(backbone, fusion, supports, context, settings, weights, tmp_path)
    damaged = bank_path(tmp_path, weights, supports[0], settings)
    data = bytearray(damaged.read_bytes())
    data[:8] = struct.pack("<Q", 2**62)
    damaged.write_bytes(bytes(data))
    with pytest.raises(MalformedSafetensors, match="bad header length"):
        SupportBank.load(damaged)
    again = build_banks(backbone, fusion, supports, context, settings, weights, tmp_path)
    assert "computing the support bank again" in caplog.text and str(damaged) in caplog.text
    check_file(damaged)  # replaced by a sound file
    for before, after in zip(first, again, strict=True):
        for layer, tensor in before.keys.items():
            torch.testing.assert_close(after.keys[layer], tensor)
