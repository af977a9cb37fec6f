"""`labeler doctor`: every section printed, credentials by name only, models looked up offline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def doctor(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    home = tmp_path / "home"
    (home / ".aws").mkdir(parents=True, exist_ok=True)
    (home / ".aws" / "credentials").write_text("[default]\naws_secret_access_key = filesecret\n")
    environ = {
        **os.environ, "PYTHONPATH": str(REPO), "HOME": str(home),
        "LABELER_CACHE": str(tmp_path / "cache"), "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "1", "AWS_SECRET_ACCESS_KEY": "topsecret", **env,
    }
    environ.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
    return subprocess.run([sys.executable, "-m", "labeler.cli", "doctor", *args], env=environ,
                          capture_output=True, text=True, timeout=120, check=False)


def test_doctor_prints_every_section_and_no_secret(tmp_path):
    result = doctor(tmp_path, "--model", "tiny")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for title in ["versions", "gpu", "cache", "model tiny", "storage credentials"]:
        assert f"\n{title}\n" in f"\n{out}", title
    for name in ["python", "torch", "ray", "diffusers", "transformers", "CUDA_VISIBLE_DEVICES"]:
        assert f"  {name} " in out, name
    assert str(tmp_path / "cache") in out and str(tmp_path / "hf") in out and "GiB free" in out
    assert "built in" in out
    assert "env AWS_SECRET_ACCESS_KEY" in out and "file ~/.aws/credentials" in out
    assert "topsecret" not in out + result.stderr and "filesecret" not in out + result.stderr
    assert "gs://  none found" in out


def test_doctor_reports_a_model_it_cannot_find_offline(tmp_path):
    result = doctor(tmp_path, "--model", "nobody/no-such-model")
    assert result.returncode == 1
    assert "PROBLEM: nobody/no-such-model is neither a directory nor in the Hugging Face cache" in result.stdout
    model_dir = tmp_path / "sd"
    (model_dir / "unet").mkdir(parents=True)
    result = doctor(tmp_path, "--model", str(model_dir))
    assert result.returncode == 0 and f"diffusers directory {model_dir}" in result.stdout
