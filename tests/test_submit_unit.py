"""``labeler submit`` without a cluster: the job spec, submission ids, resubmission, waiting.

The Jobs API client is a fake with the methods of ``JobSubmissionClient`` that the module uses;
the real client is exercised in ``tests/test_submit_cluster.py`` (slow).
"""

from __future__ import annotations

import io
import json
import os
import shlex
from pathlib import Path
from types import SimpleNamespace

import pytest

from labeler.cli import build_parser, main
from labeler.cluster import submit as jobs
from labeler.config import build_config, load_job_file

JOB = """\
method = "diffseg"
input = "photos"
output = "out/photos"
model = "tiny"
shard_size = 2

[diffseg]
kl_threshold = 0.7
"""


@pytest.fixture
def job_dir(tmp_path) -> Path:
    (tmp_path / "job.toml").write_text(JOB)
    (tmp_path / "photos").mkdir()
    return tmp_path


def spec_for(job_dir: Path, environ: dict | None = None, **overrides) -> jobs.JobSpec:
    return jobs.build_job_spec(job_dir / "job.toml", overrides, cwd=job_dir,
                               environ=environ or {})


# --------------------------------------------------------------------------------------------
# The job spec
# --------------------------------------------------------------------------------------------


def test_entrypoint_runs_the_job_file_on_the_cluster_it_runs_on(job_dir):
    spec = spec_for(job_dir, workers=4)
    tokens = shlex.split(spec.entrypoint)
    assert tokens[:8] == ["python", "-m", "labeler", "run", "job.toml", "--address", "auto",
                          "--no-progress"]
    flags = dict(zip(tokens[8::2], tokens[9::2]))
    assert flags == {"--workers": "4", "--input": str(job_dir / "photos"),
                     "--output": str(job_dir / "out" / "photos")}
    assert spec.config.address == "auto" and spec.config.workers == 4
    assert spec.config.input == str(job_dir / "photos")


def test_entrypoint_flags_rebuild_the_same_job_with_labeler_run(job_dir):
    spec = spec_for(job_dir, workers=2, seed=7, overwrite=True, gpus_per_worker=0.5,
                    model="./models/sd")
    args = build_parser().parse_args(shlex.split(spec.entrypoint)[3:])
    keys = [name for name in type(spec.config).model_fields if hasattr(args, name)]
    config = build_config(load_job_file(job_dir / args.job),
                          {key: getattr(args, key) for key in keys})
    assert config == spec.config
    assert config.model == str(job_dir / "models" / "sd") and config.overwrite is True


def test_uris_and_model_names_are_left_alone(job_dir):
    spec = spec_for(job_dir, input="s3://bucket/photos/", output="gs://b/out",
                    model="CompVis/stable-diffusion-v1-4")
    assert spec.config.input == "s3://bucket/photos/" and spec.config.output == "gs://b/out"
    assert spec.config.model == "CompVis/stable-diffusion-v1-4"


def test_submission_id_follows_the_output_settings_and_location_not_the_scale(job_dir):
    base = spec_for(job_dir).id_base
    assert base.startswith("labeler-") and base == spec_for(job_dir).id_base
    assert spec_for(job_dir, workers=8, batch_size=16, device="cuda").id_base == base
    assert spec_for(job_dir, seed=1).id_base != base
    assert spec_for(job_dir, output="out/other").id_base != base
    assert base.split("-")[1] == spec_for(job_dir).config.fingerprint()


def test_uris_with_credentials_are_refused_without_echoing_them(job_dir):
    with pytest.raises(ValueError) as error:
        spec_for(job_dir, input="s3://AKIAXXXX:topsecret@bucket/photos/")
    assert "topsecret" not in str(error.value) and "credentials" in str(error.value)


def test_runtime_env_ships_the_package_and_forwards_only_non_secret_settings(job_dir):
    environ = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "HF_HUB_OFFLINE": "1",
               "AWS_ACCESS_KEY_ID": "AKIA", "AWS_SECRET_ACCESS_KEY": "secret",
               "AWS_SESSION_TOKEN": "token", "RAY_AUTH_TOKEN": "raytoken"}
    spec = spec_for(job_dir, environ)
    env = spec.runtime_env
    assert env["env_vars"] == {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "HF_HUB_OFFLINE": "1"}
    (module,) = env["py_modules"]
    assert Path(module).name == "labeler" and (Path(module) / "cli.py").is_file()
    assert "__pycache__" in env["excludes"]
    assert "pip" not in env and "working_dir" not in env
    described = json.dumps(spec.describe())
    for secret in ("AKIA", "secret", "raytoken"):
        assert secret not in described


def test_installed_code_and_pinned_requirements(job_dir):
    spec = jobs.build_job_spec(job_dir / "job.toml", {}, cwd=job_dir, environ={},
                               ship_code=False, pip=["torch==2.13.0"],
                               python="/opt/venv/bin/python")
    assert "py_modules" not in spec.runtime_env
    assert spec.runtime_env["pip"]["packages"] == ["torch==2.13.0"]
    assert spec.entrypoint.startswith("/opt/venv/bin/python -m labeler run")
    with pytest.raises(ValueError):
        jobs.build_job_spec(job_dir / "job.toml", {}, cwd=job_dir, python="python; rm -rf /")


def test_pinned_requirements_use_installed_versions_without_local_labels():
    import ray
    import torch

    pinned = jobs.pinned_requirements(["torch>=2.4", "ray[default]>=2.40",
                                       "no-such-package-xyz>=1; python_version > '3'"])
    assert pinned == [f"torch=={torch.__version__.split('+')[0]}",
                      f"ray[default]=={ray.__version__}", "no-such-package-xyz>=1"]
    names = [spec.split("==")[0].split("[")[0] for spec in jobs.pinned_requirements()]
    assert {"torch", "diffusers", "ray", "pyarrow"} <= set(names)


# --------------------------------------------------------------------------------------------
# Submitting and resubmitting
# --------------------------------------------------------------------------------------------


class FakeClient:
    """The Jobs API as far as labeler uses it, without ``tail_job_logs`` (polling path)."""

    def __init__(self, jobs_=(), statuses=(), logs=()) -> None:
        self.jobs = list(jobs_)
        self.submitted: list[dict] = []
        self.statuses = list(statuses)
        self.logs = list(logs)
        self.stopped: list[str] = []

    def list_jobs(self):
        return self.jobs

    def submit_job(self, **kwargs):
        working_dir = kwargs["runtime_env"].get("working_dir")
        kwargs["files"] = sorted(os.listdir(working_dir)) if working_dir else None
        self.submitted.append(kwargs)
        return kwargs["submission_id"]

    def get_job_status(self, job_id):
        return self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]

    def get_job_logs(self, job_id):
        return self.logs.pop(0) if len(self.logs) > 1 else self.logs[0]

    def stop_job(self, job_id):
        self.stopped.append(job_id)
        return True


def job(submission_id: str, status: str, output_hash: str | None = None):
    metadata = {"labeler_output_hash": output_hash} if output_hash else {}
    return SimpleNamespace(submission_id=submission_id, status=status, metadata=metadata)


def test_first_submission_uses_the_base_id_and_ships_only_the_job_file(job_dir):
    spec = spec_for(job_dir)
    client = FakeClient([job("raysubmit_other", "RUNNING")])
    submission = jobs.submit_job(client, spec)
    assert submission == jobs.Submission(spec.id_base, new=True, previous=())
    (sent,) = client.submitted
    assert sent["files"] == ["job.toml"] and sent["entrypoint"] == spec.entrypoint
    assert sent["metadata"]["labeler_fingerprint"] == spec.config.fingerprint()
    assert all(isinstance(value, str) for value in sent["metadata"].values())
    assert not Path(sent["runtime_env"]["working_dir"]).exists()  # staged, then removed


def test_a_running_job_is_not_submitted_again(job_dir):
    spec = spec_for(job_dir)
    client = FakeClient([job(spec.id_base, "SUCCEEDED"), job(f"{spec.id_base}-2", "RUNNING")])
    submission = jobs.submit_job(client, spec)
    assert submission.job_id == f"{spec.id_base}-2" and not submission.new
    assert client.submitted == []


def test_resubmitting_an_ended_job_gets_the_next_suffix(job_dir):
    spec = spec_for(job_dir)
    ended = [job(spec.id_base, "SUCCEEDED"), job(f"{spec.id_base}-3", "FAILED"),
             job(f"{spec.id_base}-2", "STOPPED"), job(f"{spec.id_base}x-9", "RUNNING")]
    submission = jobs.submit_job(FakeClient(ended), spec)
    assert submission.job_id == f"{spec.id_base}-4" and submission.new
    assert submission.previous == (spec.id_base, f"{spec.id_base}-2", f"{spec.id_base}-3")


def test_another_active_job_on_the_same_output_is_refused(job_dir):
    spec = spec_for(job_dir)
    other = job("labeler-0000000000000000-x", "PENDING", spec.metadata["labeler_output_hash"])
    with pytest.raises(ValueError, match="same output"):
        jobs.submit_job(FakeClient([other]), spec)
    other.status = "FAILED"
    assert jobs.submit_job(FakeClient([other]), spec).new


# --------------------------------------------------------------------------------------------
# Waiting and following
# --------------------------------------------------------------------------------------------


def test_waiting_polls_and_writes_each_log_line_once():
    client = FakeClient(statuses=["PENDING", "RUNNING", "RUNNING", "SUCCEEDED"],
                        logs=["", "a\n", "a\nb\n", "a\nb\nc\n"])
    out = io.StringIO()
    assert jobs.wait_for_job(client, "j", out=out, poll_seconds=0) == "SUCCEEDED"
    assert out.getvalue() == "a\nb\nc\n"


def test_waiting_streams_logs_when_the_client_can():
    class StreamingClient(FakeClient):
        async def tail_job_logs(self, job_id):
            for chunk in ("one\n", "two\n"):
                yield chunk

    client = StreamingClient(statuses=["FAILED"], logs=["one\ntwo\n"])
    out = io.StringIO()
    assert jobs.wait_for_job(client, "j", out=out, poll_seconds=0) == "FAILED"
    assert out.getvalue() == "one\ntwo\n"


def test_waiting_times_out():
    with pytest.raises(TimeoutError):
        jobs.wait_for_job(FakeClient(statuses=["RUNNING"], logs=[""]), "j", timeout=0.05,
                          poll_seconds=0.01)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def test_submit_dry_run_prints_the_submission(job_dir, capsys, monkeypatch):
    monkeypatch.chdir(job_dir)
    code = main(["submit", "job.toml", "--workers", "3", "--dry-run"])
    assert code == 0
    described = json.loads(capsys.readouterr().out)
    assert described["submission_id"] == spec_for(job_dir).id_base
    assert "--workers 3" in described["entrypoint"]
    assert described["runtime_env"]["working_dir"] == "<folder with job.toml>"


def test_submit_flags_are_the_run_settings_and_run_keeps_its_own(job_dir):
    parser = build_parser()
    run = parser.parse_args(["run", "j.toml", "--address", "ray://x:10001", "--no-progress"])
    assert run.job == "j.toml" and run.address == "ray://x:10001" and run.no_progress
    submit = parser.parse_args(["submit", "j.toml", "--address", "http://h:8265", "--overwrite",
                                "--gpus-per-worker", "0.5", "--max-pixels", "100"])
    assert submit.job == "j.toml" and submit.address == "http://h:8265"
    assert submit.overwrite is True and submit.gpus_per_worker == 0.5 and submit.max_pixels == 100


def test_unreachable_cluster_is_a_clear_error(capsys):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert main(["logs", "some-job", "--address", f"http://127.0.0.1:{port}"]) == 2
    assert "cannot reach the Ray Jobs API" in capsys.readouterr().err


def test_local_folders_are_forwarded_only_to_a_cluster_on_this_machine(job_dir):
    environ = {"LABELER_CACHE": "/home/me/.cache/labeler", "HF_HOME": "/home/me/hf",
               "HF_HUB_OFFLINE": "1"}
    assert jobs.forwarded_env(environ, local_cluster=True) == environ
    assert jobs.forwarded_env(environ, local_cluster=False) == {"HF_HUB_OFFLINE": "1"}
    remote = jobs.build_job_spec(job_dir / "job.toml", {}, cwd=job_dir, environ=environ,
                                 local_cluster=False)
    assert remote.runtime_env["env_vars"] == {"HF_HUB_OFFLINE": "1"}
    for address in ("http://127.0.0.1:8265", "localhost:8265", "http://[::1]:8265"):
        assert jobs.is_local_address(address), address
    for address in ("http://10.0.0.5:8265", "https://ray.example.com", None, ""):
        assert not jobs.is_local_address(address), address


def test_local_auth_token_lookup(tmp_path):
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-home\n")
    (tmp_path / "token").write_text("from-path")
    assert jobs.local_auth_token({"RAY_AUTH_TOKEN": "env"}, tmp_path) == "env"
    assert jobs.local_auth_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "token")},
                                 tmp_path) == "from-path"
    assert jobs.local_auth_token({}, tmp_path) == "from-home"
    assert jobs.local_auth_token({}, tmp_path / "nowhere") is None


def test_following_a_failed_job_exits_non_zero(monkeypatch, capsys):
    client = FakeClient(statuses=["RUNNING", "FAILED"], logs=["boom\n"])
    monkeypatch.setattr(jobs, "connect", lambda address: client)
    monkeypatch.setattr(jobs, "POLL_SECONDS", 0)
    assert main(["logs", "labeler-x", "--follow", "--address", "http://h:8265"]) == 1
    out = capsys.readouterr().out
    assert "boom" in out and out.strip().endswith("job labeler-x FAILED")
    assert main(["stop", "labeler-x", "--address", "http://h:8265"]) == 0
    assert client.stopped == ["labeler-x"]
