"""DiffewS checkpoints go through the storage layer (issue 24): `labeler diffews train` and
`import` write to an object store (the local S3-compatible server) as to a local folder, each
file whole and retried; `--model s3://...` loads what they wrote (again after it changed); a
training resumes from the store; a training state that would need unpickling code is refused,
never run."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle

import pytest
import torch
from safetensors.torch import load

from labeler.cli import main
from labeler.io.files import write_folder
from labeler.io.folders import AtomicWriter, Folder
from labeler.methods.diffews import train as train_module
from labeler.methods.diffews.model import SUPPORT_WEIGHT, UNET_WEIGHTS, load_diffews_backbone
from tests.diffews_helpers import support_folder, tiny_checkpoint

FLAGS = ["--classes", "background,red,green", "--model", "tiny", "--save-every", "1",
         "--size", "64", "--lr", "1e-3", "--accumulation", "1", "--seed", "3", "--device", "cpu"]
CHECKPOINT_FILES = {"model_index.json", "unet/config.json", f"unet/{UNET_WEIGHTS}",
                    "vae/config.json", "text_encoder/config.json", "scheduler/scheduler_config.json",
                    train_module.STATE, train_module.SETTINGS}


def cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def train(support, output: str, steps: int) -> tuple[int, str, str]:
    return cli("diffews", "train", "--images", str(support), "--masks", str(support),
               "--output", output, "--steps", str(steps), *FLAGS)


@pytest.fixture
def bucket(s3_env, labeler_cache):
    name = f"ckpt-{os.urandom(4).hex()}"
    s3_env.create_bucket(name)
    return name


def test_training_writes_resumes_and_loads_from_an_object_store(tmp_path, bucket, monkeypatch, caplog):
    support = support_folder(tmp_path / "support")
    uri = f"s3://{bucket}/runs/ckpt"
    flaky = {"unet weights": 0}
    enter = AtomicWriter.__enter__

    def fail_the_first_unet_weights_write(self):  # the fault: a reset connection, once
        if self.relative.endswith(f"unet/{UNET_WEIGHTS}") and not flaky["unet weights"]:
            flaky["unet weights"] += 1
            raise ConnectionResetError("connection reset by peer")
        return enter(self)

    monkeypatch.setattr(AtomicWriter, "__enter__", fail_the_first_unet_weights_write)
    code, out, err = train(support, uri, steps=1)
    assert code == 0, err
    assert flaky["unet weights"] == 1 and "transient error" in caplog.text  # retried, not fatal
    folder = Folder(uri)
    files = set(folder.files_under(""))
    assert CHECKPOINT_FILES <= files and not [f for f in files if ".tmp-" in f]
    assert not any(tmp_path.glob("**/unet"))  # nothing staged beside the job
    first, _ = load_diffews_backbone(uri, device="cpu")  # mirrored into the cache

    code, out, err = train(support, uri, steps=2)  # continues the run on the store
    assert code == 0, err
    assert json.loads(out[: out.rindex("}") + 1])["resumed_from"] == 1
    state = torch.load(io.BytesIO(folder.read_bytes(train_module.STATE)), weights_only=True)
    assert state["step"] == 2
    weights = load(folder.read_bytes(f"unet/{UNET_WEIGHTS}"))
    backbone, digest = load_diffews_backbone(uri, device="cpu")
    torch.testing.assert_close(backbone.unet.conv_in.support.weight, weights[SUPPORT_WEIGHT],
                               rtol=0, atol=0)
    torch.testing.assert_close(weights[SUPPORT_WEIGHT], state["unet"]["conv_in.support.weight"],
                               rtol=0, atol=0)
    assert len(digest) == 16
    # the store's checkpoint changed since the first load: copied again, never served stale
    assert not torch.equal(first.unet.conv_in.support.weight, backbone.unet.conv_in.support.weight)


def test_import_reads_and_writes_an_object_store(tmp_path, bucket):
    trained = f"s3://{bucket}/release"  # an official release's fine-tuned unet/, on the store
    write_folder(tiny_checkpoint(tmp_path / "ckpt") / "unet", Folder(trained), "unet")
    imported = f"s3://{bucket}/imported"
    code, _, err = cli("diffews", "import", "--base", "tiny", "--unet", f"{trained}/unet",
                       "--output", imported)
    assert code == 0, err
    folder = Folder(imported)
    assert {"model_index.json", "unet/config.json", f"unet/{UNET_WEIGHTS}"} <= set(folder.files_under(""))
    original = load(Folder(trained).read_bytes(f"unet/{UNET_WEIGHTS}"))
    copied = load(folder.read_bytes(f"unet/{UNET_WEIGHTS}"))
    torch.testing.assert_close(copied[SUPPORT_WEIGHT], original[SUPPORT_WEIGHT], rtol=0, atol=0)
    code, _, err = cli("diffews", "import", "--base", "tiny", "--unet", f"{trained}/unet",
                       "--output", imported)
    assert code == 2 and "exists; choose a new folder" in err


class _RunsCode:
    """Unpickling this calls os.system: what a hostile training state would carry."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_training_state_that_would_run_code_is_refused_not_run(tmp_path, bucket):
    support = support_folder(tmp_path / "support")
    uri = f"s3://{bucket}/hostile"
    marker = tmp_path / "ran"
    Folder(uri).write_bytes(train_module.STATE, pickle.dumps({"unet": _RunsCode(str(marker))}))
    code, _, err = train(support, uri, steps=2)
    assert code == 2 and err.count("\n") == 1, err
    assert "is not a training state labeler wrote" in err and not marker.exists()
