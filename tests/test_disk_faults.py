"""Disk faults: permanent, reported at once with exit 2 and one line, no temporary files left;
a complete output is inspected, exported and evaluated from read-only storage."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from labeler.cli import main
from labeler.io.folders import Folder
from labeler.io.retry import RetryPolicy, disk_fault, is_transient_error
from labeler.runtime import job as job_module
from tests.helpers import flat_regions_image

FAULTS = [errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES]


@pytest.mark.parametrize("code", FAULTS)
def test_disk_faults_are_permanent_and_never_retried(code):
    error = OSError(code, "disk says no", "/out/run/x")
    assert not is_transient_error(error)
    wrapped = RuntimeError("commit failed")
    wrapped.__cause__ = error
    assert disk_fault(wrapped) is error
    calls = []
    policy = RetryPolicy(attempts=5, sleep=lambda _: None)
    with pytest.raises(OSError):
        policy.call(lambda: calls.append(1) or (_ for _ in ()).throw(error), what="x")
    assert calls == [1]


def test_other_os_errors_stay_transient():
    assert is_transient_error(OSError(errno.EIO, "I/O error"))
    assert disk_fault(OSError(errno.EIO, "I/O error")) is None


class FullFile(io.BytesIO):
    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    folder = Folder(str(tmp_path / "out"))
    real_open = folder.fs.open

    def open_then_fill(path, mode="rb", **kwargs):
        handle = real_open(path, mode, **kwargs)
        if "w" in mode:
            handle.write = FullFile().write
        return handle

    monkeypatch.setattr(folder.fs, "open", open_then_fill)
    with pytest.raises(OSError, match="No space"):
        folder.write_bytes("run/config.json", b"{}")
    with pytest.raises(OSError, match="No space"), folder.open_atomic_writer("coco.json") as handle:
        handle.write(b"{")
    assert [p.name for p in (tmp_path / "out").rglob("*") if p.is_file()] == []


def test_stale_temporary_files_are_swept(tmp_path):
    folder = Folder(str(tmp_path))
    folder.write_bytes("coco.json.tmp-0a1b2c3d", b"")
    folder.write_bytes("run/shards/s/images.parquet.tmp-deadbeef", b"x")
    folder.write_bytes("coco.json", b"{}")
    assert folder.remove_temporary() == 2
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["coco.json"]


# -- real mounts (root only): a read-only output, a full disk -----------------------------------


def _mount(*args: str) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"needs a mount (root): {result.stderr.strip()}")


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    image, _ = flat_regions_image(64, 96, "quadrants")
    for index in range(3):
        Image.fromarray(image).save(folder / f"{index}.png")
    return folder


def run_cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def _labels(photos: Path, output: Path, executor: str = "local") -> list[str]:
    """``labeler run`` arguments; the in-process executor unless a Ray worker is under test."""
    return ["run", "--method", "diffseg", "--model", "tiny", "--input", str(photos),
            "--output", str(output), "--workers", "1", "--shard-size", "2", "--no-progress",
            "--executor", executor]


@pytest.fixture
def read_only(tmp_path):
    """(source, mount): ``mount`` shows ``source`` read-only."""
    source, view = tmp_path / "rw", tmp_path / "ro"
    source.mkdir()
    view.mkdir()
    _mount("--bind", str(source), str(view))
    try:
        _mount("-o", "remount,bind,ro", str(view))
        yield source, view
    finally:
        subprocess.run(["umount", str(view)], check=False)


def test_a_read_only_output_is_refused_in_one_line(photos, read_only):
    _, view = read_only
    code, _, err = run_cli(*_labels(photos, view / "labels"))
    assert code == 2, err
    assert err.count("\n") == 1 and "not writable" in err and "Traceback" not in err
    assert list(view.iterdir()) == []


def test_a_complete_output_is_read_from_read_only_storage(photos, read_only, tmp_path):
    source, view = read_only
    code, _, err = run_cli(*_labels(photos, source / "labels"))
    assert code == 0, err
    before = {p: p.stat().st_mtime_ns for p in (source / "labels").rglob("*") if p.is_file()}
    assert run_cli("status", str(view / "labels"))[0] == 0
    code, _, err = run_cli("export", str(view / "labels"), "--format", "yolo-seg",
                           "--out", str(tmp_path / "yolo"))
    assert code == 0, err
    code, _, err = run_cli("eval", "--pred", str(view / "labels"), "--gt",
                           str(view / "labels" / "coco.json"), "--out", str(tmp_path / "report"))
    assert code == 0, err
    after = {p: p.stat().st_mtime_ns for p in (source / "labels").rglob("*") if p.is_file()}
    assert after == before


def test_a_rerun_of_a_complete_output_does_not_merge_again(photos, tmp_path, monkeypatch):
    output = tmp_path / "labels"
    assert run_cli(*_labels(photos, output))[0] == 0
    merged = (output / "coco.json").stat().st_mtime_ns
    monkeypatch.setattr(job_module, "merge_outputs",
                        lambda *a, **k: pytest.fail("merged an unchanged output"))
    code, out, err = run_cli(*_labels(photos, output))
    assert code == 0, err
    assert (output / "coco.json").stat().st_mtime_ns == merged
    assert "3 images" in out or "3 labeled" in out


@pytest.fixture
def tiny_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    _mount("-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount))
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def _fill(disk: Path) -> None:
    with open(disk / "ballast", "wb") as handle, contextlib.suppress(OSError):
        while True:
            handle.write(b"\0" * 65536)
            handle.flush()


def test_a_full_disk_at_the_start_is_exit_2_in_one_line(photos, tiny_disk):
    _fill(tiny_disk)
    code, _, err = run_cli(*_labels(photos, tiny_disk / "labels"))
    assert code == 2 and err.count("\n") == 1, err
    assert "no space left on device" in err
    assert [p.name for p in tiny_disk.rglob("*") if ".tmp" in p.name] == []
    assert not (tiny_disk / "labels" / "run" / "lease.json").exists()  # no lease to wedge on


def test_after_a_full_disk_at_the_start_the_same_command_runs_once_freed(photos, tiny_disk):
    _fill(tiny_disk)
    assert run_cli(*_labels(photos, tiny_disk / "labels"))[0] == 2
    (tiny_disk / "ballast").unlink()  # the event: the disk has room again
    code, _, err = run_cli(*_labels(photos, tiny_disk / "labels"))
    assert code == 0, err
    assert run_cli("verify", str(tiny_disk / "labels"))[0] == 0


def test_a_disk_filling_up_while_workers_commit_stops_the_run_at_once(photos, tiny_disk,
                                                                       monkeypatch):
    real = job_module.execute_shards

    def fill_then_execute(*args, **kwargs):  # the event: the plan is written, shards start
        _fill(tiny_disk)
        return real(*args, **kwargs)

    monkeypatch.setattr(job_module, "execute_shards", fill_then_execute)
    # on Ray: the disk fault a worker meets reaches the driver inside a RayTaskError
    code, _, err = run_cli(*_labels(photos, tiny_disk / "labels", executor="ray"))
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    # a worker committing a part, or the driver recording what the first worker reported
    assert last.startswith("labeler: error: ") and "no space left on device" in last
    assert "Traceback" not in err
    assert [str(p) for p in tiny_disk.rglob("*") if ".tmp" in p.name] == []
    assert not (tiny_disk / "labels" / "run" / "failed").exists()  # never retried shard by shard
    assert json.loads((tiny_disk / "labels" / "run" / "config.json").read_text())
