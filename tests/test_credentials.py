"""Credentials in URIs: refused at config time with one redacted line; a real job whose manifest
holds credentialed URIs writes the secret nowhere (files, stdout, stderr)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from labeler.config import build_config
from labeler.errors import UserError
from labeler.io.uris import redact_text
from tests.helpers import flat_regions_image
from tests.s3server import S3Server

ROOT = Path(__file__).resolve().parents[1]
SECRET = "wJalrXUtnFEMIxK7MDENGbPxRfiCYzEXAMPLEKEY"
KEY = "AKIAIOSFODNN7EXAMPLE"


def labeler(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "labeler", *args], check=False,
                          capture_output=True, text=True, env=environment, timeout=600)


@pytest.mark.parametrize("flag", ["--input", "--output", "--model"])
def test_a_uri_with_credentials_is_refused_in_one_line_without_the_secret(tmp_path, flag):
    uris = {"--input": str(tmp_path), "--output": str(tmp_path / "out"), "--model": "tiny"}
    uris[flag] = f"s3://{KEY}:{SECRET}@bucket/thing"
    args = [arg for name, value in uris.items() for arg in (name, value)]
    result = labeler("run", "--method", "diffseg", *args, "--no-progress")
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "credentials in a URI are refused" in result.stderr
    assert flag in result.stderr and "s3://***@bucket/thing" in result.stderr
    assert SECRET not in result.stdout + result.stderr and KEY not in result.stderr
    assert not (tmp_path / "out").exists()


def test_embeddings_with_credentials_are_refused_before_anything_runs(tmp_path):
    with pytest.raises(UserError, match="--embeddings: credentials in a URI") as raised:
        build_config({}, {"input": str(tmp_path), "output": str(tmp_path / "out"),
                          "method": "slime", "embeddings": f"gs://{KEY}:{SECRET}@b/set.safetensors"})
    assert SECRET not in str(raised.value)


def test_text_redaction_finds_urls_anywhere_in_a_message():
    text = f"FileNotFoundError: s3://{KEY}:{SECRET}@bucket/x.png (https://h/p?X-Amz-Signature=abc)"
    redacted = redact_text(text)
    assert SECRET not in redacted and KEY not in redacted and "abc" not in redacted
    assert "s3://***@bucket/x.png" in redacted


def test_a_job_with_credentials_in_manifest_entries_writes_the_secret_nowhere(
    s3_server: S3Server, tmp_path
):
    s3_server.create_bucket("creds")
    fs = s3_server.filesystem()
    image, _ = flat_regions_image(64, 96, "quadrants")
    lines = []
    for index in range(3):
        path = tmp_path / f"{index}.png"
        Image.fromarray(image).save(path)
        fs.pipe_file(f"creds/in/{index}.png", path.read_bytes())
        lines.append(f"s3://{KEY}:{SECRET}@creds/in/{index}.png")
    fs.pipe_file("creds/in/list.txt", ("\n".join(lines) + "\n").encode())
    output = tmp_path / "out"

    result = labeler("run", "--method", "diffseg", "--model", "tiny", "--input",
                     "s3://creds/in/list.txt", "--output", str(output), "--workers", "1",
                     "--no-progress", env=s3_server.env)

    assert result.returncode == 0, result.stderr[-2000:]
    assert "3 labeled" in result.stdout or "3 labeled" in result.stderr
    streams = result.stdout + result.stderr
    assert SECRET not in streams and KEY not in streams
    files = [path for path in output.rglob("*") if path.is_file()]
    assert any(path.name == "coco.json" for path in files)
    for path in files:
        content = path.read_bytes()
        assert SECRET.encode() not in content and KEY.encode() not in content, path
