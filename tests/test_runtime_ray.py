"""``labeler run`` end to end on a local Ray cluster, with real faults.

One Ray session serves the module (started after the S3 test server's environment is set, so the
workers inherit it, and pointed at it through a proxy); each job starts its own worker actors with
the ``tiny`` model. The faults are real and triggered by events (a done marker appears, a
connection is refused), never timers: a worker process SIGKILLed mid-shard, the driver process
group SIGKILLed mid-run, the storage cut off mid-run (the proxy resets every connection until
the run has met the outage), a shard whose code fails on every attempt. After each, the output must
equal an uninterrupted run's: same ``images.parquet`` rows, same COCO images and annotations,
same ``annotations/`` rows.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import psutil
import pyarrow.parquet as pq
import pytest
from PIL import Image

from labeler.cli import main
from labeler.config import JobConfig
from labeler.io.folders import Folder
from labeler.io.listing import folder_root
from labeler.methods.diffseg.algorithm import DiffSegOptions
from labeler.output.names import ImageNamer
from labeler.runtime.job import RunSummary, input_items, run_job
from labeler.runtime.plan import plan_run
from labeler.runtime.run_folder import RunFolder
from labeler.runtime.status import describe_run, run_progress
from tests.s3server import S3Server
from tests.tcpproxy import TcpProxy

REPO = Path(__file__).resolve().parent.parent
BUCKET = "labeler-runtime"
#: Seconds after which a wait is a hang: an upper bound, never a timing. Generous because Ray
#: runs its workers at niceness 15: beside two normal-priority busy loops on 2 cores (the soak,
#: scripts/soak_fault_tests.sh) a worker gets a few percent of a core and needs minutes to start.
PATIENCE = 1800.0


# --------------------------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_session(s3_server: S3Server, s3_proxy: TcpProxy) -> Iterator[None]:
    """One local Ray instance for the module; its workers see the S3 server's environment.

    The driver (this process) and the workers reach the server through ``s3_proxy``, so a test
    can cut the storage off for all of them at once.
    """
    import ray
    import s3fs

    env = {**s3_server.env, "AWS_ENDPOINT_URL": s3_proxy.url}
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    s3fs.S3FileSystem.clear_instance_cache()  # none made before reaches the server directly
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=256 * 1024**2)
    try:
        yield
    finally:
        ray.shutdown()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _image(height: int, width: int, seed: int) -> Image.Image:
    """Smooth colours with a few flat shapes: something for the segmenter to split."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, np.full_like(x, 60)], -1)
    for _ in range(3):
        top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
        pixels[top : top + height // 3, left : left + width // 3] = rng.integers(0, 256, 3)
    return Image.fromarray(pixels.astype(np.uint8))


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    """Four small images in two sub-folders (two shards of two)."""
    root = tmp_path_factory.mktemp("collection")
    for index, name in enumerate(["a/one.png", "a/two.jpg", "b/three.png", "b/four.webp"]):
        path = root / name
        path.parent.mkdir(exist_ok=True)
        _image(64 + 16 * index, 96 - 8 * index, seed=index).save(path)
    return root


def job_config(input_uri: str, output_uri: str, **overrides) -> JobConfig:
    settings = {"model": "tiny", "shard_size": 2, "batch_size": 2, "workers": 1,
                "settings": DiffSegOptions(), **overrides}
    return JobConfig(input=input_uri, output=output_uri, **settings)


@pytest.fixture(scope="module")
def reference(ray_session, collection, tmp_path_factory) -> Path:
    """The uninterrupted run every faulty run is compared with."""
    output = tmp_path_factory.mktemp("reference") / "out"
    summary = run_job(job_config(str(collection), str(output)), progress=False)
    assert summary.complete and summary.images == 4 and summary.labeled == 4
    assert summary.worker_deaths == 0 and summary.retries == 0
    return output


def read_output(folder: Folder, rename: Callable[[str], str] | None = None) -> dict:
    """What must not change between runs: rows and COCO records.

    With ``rename`` (the same collection at another URI) URIs are mapped back, and the ids
    derived from URIs (shard ids, the run id) and the inputs' identities (an ETag on S3, an
    mtime and size on a local disk) are left out.
    """
    renamed = rename is not None
    rename = rename or (lambda uri: uri)
    with folder.open("images.parquet") as handle:
        images = pq.read_table(handle).to_pylist()
    for row in images:
        row["uri"] = rename(row["uri"])
    coco = json.loads(folder.read_bytes("coco.json"))
    for record in coco["images"]:
        record["file_name"] = rename(record["file_name"])
        record["coco_url"] = rename(record["coco_url"])
    annotations = []
    for name in folder.list("annotations"):
        with folder.open(f"annotations/{name}") as handle:
            annotations += pq.read_table(handle).to_pylist()
    for row in annotations:
        row["file_name"] = rename(row["file_name"])
    if renamed:
        for row in images:
            row.pop("shard_id")
            row.pop("input_identity")
        for row in annotations:
            row.pop("run_id")
    return {"images.parquet": images, "coco.images": coco["images"],
            "coco.annotations": coco["annotations"], "coco.categories": coco["categories"],
            "annotations/": annotations}


def assert_same_output(expected: Path | Folder, actual: Path | Folder,
                       rename: Callable[[str], str] | None = None) -> None:
    as_folder = lambda f: f if isinstance(f, Folder) else Folder(str(f))
    want = read_output(as_folder(expected), (lambda uri: uri) if rename else None)
    got = read_output(as_folder(actual), rename)
    for key in want:
        assert got[key] == want[key], f"{key} differs from the uninterrupted run"
    assert len(want["coco.annotations"]) > 0


def wait_for(condition: Callable[[], bool], what: str, timeout: float = PATIENCE) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def done_markers(output: Path) -> list[str]:
    folder = output / "run" / "done"
    return sorted(p.name for p in folder.iterdir() if ".tmp-" not in p.name) if folder.exists() else []


def run_in_thread(config: JobConfig) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def target() -> None:
        try:
            result["summary"] = run_job(config, progress=False)
        except BaseException as error:  # noqa: BLE001 - re-raised by the test
            result["error"] = error

    thread = threading.Thread(target=target, name="labeler-job")
    thread.start()
    return thread, result


def finish(thread: threading.Thread, result: dict, timeout: float = PATIENCE) -> RunSummary:
    thread.join(timeout)
    assert not thread.is_alive(), "the job did not finish"
    if "error" in result:
        raise result["error"]
    return result["summary"]


def label_worker_pids() -> list[int]:
    """PIDs of this test's live LabelWorker actors (Ray titles them ``ray::LabelWorker...``).

    Only descendants of this process (its Ray instance's raylet forks the workers): other
    sessions on the machine may run their own.
    """
    pids = []
    for process in psutil.Process().children(recursive=True):
        try:
            cmdline = process.cmdline()
        except psutil.Error:
            continue
        if cmdline and cmdline[0].startswith("ray::LabelWorker"):
            pids.append(process.pid)
    return pids


# --------------------------------------------------------------------------------------------
# Clean runs
# --------------------------------------------------------------------------------------------


def test_clean_run_outputs_logs_stats_and_status(reference, collection):
    run = RunFolder(Folder(str(reference)))
    plan = run.read_plan()
    assert [s["n_images"] for s in plan["shards"]] == [2, 2]
    for shard in plan["shards"]:
        shard_id = shard["shard_id"]
        log = run.output.read_bytes(f"run/logs/{shard_id}.log").decode()
        assert f"shard {shard_id} attempt 1" in log and "2 labeled, 0 failed" in log
        stats = run.read_stats(shard_id)
        assert stats["worker"]["device"] == "cpu" and stats["timings"]["label"] > 0
    images = pq.read_table(reference / "images.parquet").to_pylist()
    assert [row["uri"] for row in images] == [
        str(collection / name) for name in ["a/one.png", "a/two.jpg", "b/four.webp", "b/three.png"]
    ]
    progress = run_progress(str(reference))
    assert progress["state"] == "complete" and progress["images_done"] == 4
    assert run.read_progress()["state"] == "complete"
    assert "complete" in describe_run(str(reference))


def test_resuming_a_complete_run_processes_nothing(ray_session, reference, collection):
    before = (reference / "coco.json").stat().st_mtime_ns
    summary = run_job(job_config(str(collection), str(reference), workers=2), progress=False)
    assert summary.complete and summary.shards_processed == 0 and summary.images == 4
    assert (reference / "coco.json").stat().st_mtime_ns >= before


def test_changed_configuration_is_refused_naming_the_change(reference, collection, tmp_path, capsys):
    job = tmp_path / "job.toml"
    job.write_text('model = "tiny"\nshard_size = 2\n[diffseg]\nkl_threshold = 0.9\n')
    code = main(["run", str(job), "--input", str(collection), "--output", str(reference),
                 "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "diffseg.kl_threshold: 1.1 -> 0.9" in err and "--overwrite" in err


# --------------------------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------------------------


def test_killed_worker_is_replaced_and_output_matches(ray_session, reference, collection, tmp_path):
    output = tmp_path / "out"
    thread, result = run_in_thread(job_config(str(collection), str(output)))
    wait_for(lambda: len(done_markers(output)) >= 1, "the first shard")
    pids = label_worker_pids()
    assert len(pids) == 1, pids
    os.kill(pids[0], signal.SIGKILL)  # mid-way through the second shard
    summary = finish(thread, result)
    assert summary.complete and summary.worker_deaths == 1
    assert summary.shards_processed == 2
    assert_same_output(reference, output)


def test_a_stopped_worker_is_declared_lost_killed_and_replaced(ray_session, reference, collection,
                                                               tmp_path):
    """A worker stopped (SIGSTOP) mid-run shows no sign of life: after --stall-timeout it is
    killed and replaced, its shard requeued, and the output matches an uninterrupted run."""
    output = tmp_path / "out"
    thread, result = run_in_thread(job_config(str(collection), str(output), stall_timeout=15))
    wait_for(lambda: len(done_markers(output)) >= 1, "the first shard")
    pids = label_worker_pids()
    assert len(pids) == 1, pids
    os.kill(pids[0], signal.SIGSTOP)  # the event: mid-way through the second shard
    try:
        summary = finish(thread, result)
    finally:
        if psutil.pid_exists(pids[0]):
            os.kill(pids[0], signal.SIGKILL)
    assert summary.complete and summary.stalls == 1 and summary.shards_processed == 2
    assert_same_output(reference, output)
    stalled = list((output / "run" / "stalled").iterdir())
    assert len(stalled) == 1
    status = describe_run(str(output))
    assert f"stalled shard {stalled[0].stem}: its worker showed no sign of life" in status
    assert "then done" in status


def test_shard_failing_every_attempt_is_recorded_then_retried_by_a_rerun(
    ray_session, reference, collection, tmp_path, capsys
):
    output = tmp_path / "out"
    config = job_config(str(collection), str(output))
    run = RunFolder(Folder(str(output)))
    image_root = folder_root(config.input)
    run.claim(config, image_root=image_root)
    plan = plan_run(run, input_items(config), config.shard_size, ImageNamer(image_root))
    broken = plan["shards"][1]["shard_id"]
    manifest = output / "run" / "manifest" / f"{broken}.jsonl"
    good = manifest.read_bytes()
    manifest.write_bytes(b'{"uri": "not json')  # every attempt raises in the worker

    summary = run_job(config, progress=False)
    assert not summary.complete and list(summary.failed_shards) == [broken]
    assert summary.failed_shards[broken]["attempts"] == 3
    assert "JSONDecodeError" in summary.failed_shards[broken]["error"]
    assert summary.worker_deaths == 0 and summary.shards_processed == 1
    assert (summary.images, summary.labeled) == (2, 2)  # what the done shard holds, not zeros
    assert not (output / "coco.json").exists()
    status = run_progress(str(output))
    assert status["state"] == "failed" and status["shards_failed"] == [broken]
    assert "JSONDecodeError" in (output / "run" / "logs" / f"{broken}.log").read_text()

    manifest.write_bytes(good)  # the bug is fixed: the same command resumes
    code = main(["run", "--input", str(collection), "--output", str(output), "--model", "tiny",
                 "--shard-size", "2", "--batch-size", "2", "--workers", "1", "--no-progress"])
    assert code == 0, capsys.readouterr()
    assert "1 of 2 shards processed" in capsys.readouterr().out
    assert run.failed_shards() == {}
    assert_same_output(reference, output)


def test_killed_driver_resumes_with_only_the_remaining_shards(reference, collection, tmp_path):
    output = tmp_path / "out"
    command = [sys.executable, "-m", "labeler.cli", "run", "--input",
               str(collection), "--output", str(output), "--model", "tiny", "--shard-size", "2",
               "--batch-size", "2", "--workers", "1", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: len(done_markers(output)) >= 1, "the first shard")
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the driver and everything in its group
        first.wait(30)
    finished_before = done_markers(output)
    assert len(finished_before) == 1 and not (output / "coco.json").exists()
    stats_before = {s: (output / "run" / "stats" / f"{s}.json").stat().st_mtime_ns
                    for s in finished_before}
    # the lease names a dead local pid: interrupted at once, never "running" until it goes stale
    assert describe_run(str(output)).splitlines()[0].endswith("interrupted")
    assert run_progress(str(output))["state"] == "interrupted"

    second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=PATIENCE, check=False)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "1 of 2 shards processed" in second.stdout
    for shard_id, mtime in stats_before.items():  # the finished shard was not redone
        assert (output / "run" / "stats" / f"{shard_id}.json").stat().st_mtime_ns == mtime
    assert_same_output(reference, output)


# --------------------------------------------------------------------------------------------
# Object storage
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_collection(s3_server: S3Server, collection: Path) -> str:
    s3_server.create_bucket(BUCKET)
    fs = s3_server.filesystem()
    for path in sorted(collection.rglob("*.*")):
        fs.pipe_file(f"{BUCKET}/in/{path.relative_to(collection).as_posix()}", path.read_bytes())
    return f"s3://{BUCKET}/in"


def _from_s3(collection: Path) -> Callable[[str], str]:
    return lambda uri: uri.replace(f"s3://{BUCKET}/in", str(collection))


def test_s3_in_and_out(ray_session, reference, collection, s3_collection, s3_server):
    output = f"s3://{BUCKET}/out-clean"
    summary = run_job(job_config(s3_collection, output), progress=False)
    assert summary.complete and summary.labeled == 4
    assert_same_output(reference, Folder(output), rename=_from_s3(collection))
    assert (s3_server.data_dir / BUCKET / "out-clean" / "coco.json").exists()
    assert "complete" in describe_run(output)


def test_storage_outage_mid_run_costs_time_not_data(
    ray_session, reference, collection, s3_collection, s3_server, s3_proxy
):
    output = f"s3://{BUCKET}/out-restart"
    on_disk = s3_server.data_dir / BUCKET / "out-restart"
    thread, result = run_in_thread(job_config(s3_collection, output))
    try:
        wait_for(lambda: len(done_markers(on_disk)) >= 1, "the first shard")
        s3_proxy.refuse()  # the storage goes away while the second shard is worked on
        # the event: the run tried to reach the storage and was refused; then it comes back
        wait_for(lambda: s3_proxy.refused >= 1, "the run to meet the outage")
        met_outage_while_running = thread.is_alive()
    finally:
        s3_proxy.forward()
    summary = finish(thread, result)
    assert met_outage_while_running
    assert summary.complete and summary.retries == 0  # absorbed by storage retries
    assert summary.worker_deaths == 0 and summary.labeled == 4
    assert_same_output(reference, Folder(output), rename=_from_s3(collection))


# --------------------------------------------------------------------------------------------
# Bad inputs, end to end
# --------------------------------------------------------------------------------------------


def _save(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _png16(height: int, width: int) -> bytes:
    values = (np.arange(height * width, dtype=np.uint32).reshape(height, width) * 97) % 65536
    return _save(Image.fromarray(values.astype(np.uint16)), "PNG")


def bad_input_corpus(root: Path) -> tuple[dict[str, str | None], str]:
    """Files of every awkward kind, and a manifest listing them (plus one that does not exist).

    Returns:
        the expected ``reason`` per manifest entry (None: labeled) and the manifest path.
    """
    rgb = _image(48, 64, seed=7)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 64 wide x 96 high, shown rotated: 96 wide x 64 high
    animated = [Image.new("RGB", (40, 30), colour) for colour in ("red", "green", "blue")]
    jpeg = _save(_image(64, 64, seed=8), "JPEG", quality=90)
    png = _save(_image(64, 64, seed=9), "PNG")
    files: dict[str, tuple[bytes, str | None]] = {
        "gray.png": (_save(rgb.convert("L"), "PNG"), None),
        "cmyk.jpg": (_save(rgb.convert("CMYK"), "JPEG"), None),
        "sixteen bit.png": (_png16(40, 56), None),
        "same name/ñame ü.png": (_save(rgb.convert("P"), "PNG"), None),  # palette
        "other folder/ñame ü.png": (_save(rgb.convert("RGBA"), "PNG"), None),  # alpha
        "rotated.jpg": (_save(_image(96, 64, seed=3), "JPEG", exif=exif), None),
        "animated.gif": (_save(animated[0], "GIF", save_all=True, append_images=animated[1:]),
                         None),
        "small.png": (_save(Image.new("RGB", (8, 8), "red"), "PNG"), None),
        "large.png": (_save(Image.new("L", (3000, 2000), 90), "PNG"), None),  # 6 Mpx
        "one pixel.png": (_save(Image.new("RGB", (1, 1)), "PNG"), "too_small"),
        "zero bytes.png": (b"", "empty_file"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        "truncated.png": (png[: len(png) // 2], "truncated"),
        "not an image.jpg": (b"hello, I am a text file\n", "not_an_image"),
        "bomb.png": (_save(Image.new("L", (4000, 3000)), "PNG"), "too_many_pixels"),  # 12 Mpx
    }
    expected: dict[str, str | None] = {}
    lines = []
    for name, (data, reason) in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        lines.append(name)
        expected[str(path)] = reason
    lines.append("deleted after listing.png")
    expected[str(root / "deleted after listing.png")] = "missing_file"  # local: never heals
    manifest = root / "manifest.txt"
    manifest.write_text("\n".join(lines) + "\n")
    return expected, str(manifest)


def test_bad_input_corpus_every_image_accounted_for(ray_session, tmp_path):
    expected, manifest = bad_input_corpus(tmp_path / "corpus")
    output = tmp_path / "out"
    config = job_config(manifest, str(output), shard_size=4, max_pixels=8_000_000)
    summary = run_job(config, progress=False)
    assert summary.complete
    rows = pq.read_table(output / "images.parquet").to_pylist()
    assert sorted(row["uri"] for row in rows) == sorted(expected)  # each exactly once
    assert {row["uri"]: row["reason"] for row in rows} == expected
    for row in rows:
        assert row["status"] == ("failed" if expected[row["uri"]] else "labeled")
        assert (row["detail"] is None) == (row["status"] == "labeled")
    assert summary.labeled == 9 and summary.failed == 7
    assert summary.failure_reasons == {"too_small": 1, "empty_file": 1, "truncated": 2,
                                       "not_an_image": 1, "too_many_pixels": 1, "missing_file": 1}

    by_uri = {row["uri"]: row for row in rows}
    rotated = by_uri[str(tmp_path / "corpus" / "rotated.jpg")]
    assert (rotated["width"], rotated["height"]) == (96, 64)  # upright, as viewers show it
    assert (by_uri[str(tmp_path / "corpus" / "large.png")]["width"]) == 3000
    coco = json.loads((output / "coco.json").read_text())
    sizes = {image["id"]: (image["width"], image["height"]) for image in coco["images"]}
    assert len(sizes) == 9
    for annotation in coco["annotations"]:
        width, height = sizes[annotation["image_id"]]
        assert annotation["segmentation"]["size"] == [height, width]


def test_workers_that_cannot_load_the_model_end_the_run_clearly(
    ray_session, collection, tmp_path, capsys
):
    # a directory that passes the pre-flight look (it has a model_index.json) but cannot load
    broken = tmp_path / "broken-model"
    (broken / "unet").mkdir(parents=True)
    (broken / "model_index.json").write_text("{}")
    code = main(["run", "--input", str(collection), "--output", str(tmp_path / "out"),
                 "--model", str(broken), "--workers", "1", "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    first_line = err.split("labeler: error: ", 1)[1].splitlines()[0]
    assert first_line.startswith("workers died 3 times before they were ready: ")
    assert "ModelLoadError" in first_line and "broken-model" in err
    assert "\x1b[" not in err
    assert run_progress(str(tmp_path / "out"))["state"] == "interrupted"
