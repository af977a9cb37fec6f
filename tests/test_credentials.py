"""Credentials in URIs: refused at config time with one redacted line; a real job whose manifest
holds credentialed URIs writes the secret nowhere (files, stdout, stderr)."""

from __future__ import annotations

import http.server
import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import ClassVar

import pyarrow.parquet as pq
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

    # in-process executor: the pre-signed test below runs the same check on Ray workers too
    result = labeler("run", "--method", "diffseg", "--model", "tiny", "--input",
                     "s3://creds/in/list.txt", "--output", str(output), "--workers", "1",
                     "--executor", "local", "--no-progress", env=s3_server.env)

    assert result.returncode == 0, result.stderr[-2000:]
    assert "3 labeled" in result.stdout or "3 labeled" in result.stderr
    streams = result.stdout + result.stderr
    assert SECRET not in streams and KEY not in streams
    files = [path for path in output.rglob("*") if path.is_file()]
    assert any(path.name == "coco.json" for path in files)
    for path in files:
        content = path.read_bytes()
        assert SECRET.encode() not in content and KEY.encode() not in content, path


# -- fault: secrets in URL queries (pre-signed URLs) are read, never stored ------------------------

SIGNATURE = "5e2ad0c0ffee5ec2e7519a7b0b9b3c8f1d2e3f4a5b6c7d8e9f00112233445566"
TOKEN = "FwoGZXIvYXdzEJr//////////wEaDMySessionTokenExample"


class _SignedImages(http.server.BaseHTTPRequestHandler):
    """Serves ``/img/<name>`` only to requests carrying the pre-signed query; counts them."""

    images: ClassVar[dict[str, bytes]] = {}
    served: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        values = dict(item.partition("=")[::2] for item in query.split("&") if item)
        body = self.images.get(path.removeprefix("/img/"))
        if body is None or values.get("X-Amz-Signature") != SIGNATURE or \
                values.get("X-Amz-Security-Token") != TOKEN:
            self.send_error(403)
            return
        self.served.append(path)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.send_error(405)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def signed_server():
    image, _ = flat_regions_image(64, 96, "quadrants")
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    _SignedImages.images = {f"{index}.png": buffer.getvalue() for index in range(4)}
    _SignedImages.served = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SignedImages)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()


#: The signature of an entry the server refuses (403): its failure must not store it either.
WRONG_SIGNATURE = "0badc0de0badc0de0badc0de0badc0de0badc0de0badc0de0badc0de0badc0de"


def _signed(base: str, name: str, signature: str = SIGNATURE) -> str:
    return (f"{base}/img/{name}?X-Amz-Algorithm=AWS4-HMAC-SHA256"
            f"&X-Amz-Credential={KEY}%2F20261207%2Fus-east-1%2Fs3%2Faws4_request"
            f"&X-Amz-Date=20261207T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host"
            f"&X-Amz-Security-Token={TOKEN}&X-Amz-Signature={signature}")


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_a_presigned_manifest_is_read_and_its_secrets_stored_nowhere(signed_server, tmp_path,
                                                                    executor):
    manifest = tmp_path / "list.txt"
    entries = [_signed(signed_server, f"{index}.png") for index in range(3)]
    entries.append(_signed(signed_server, "3.png", WRONG_SIGNATURE))  # refused: a failed image
    manifest.write_text("".join(entry + "\n" for entry in entries))
    output = tmp_path / "out"

    result = labeler("-v", "run", "--method", "diffseg", "--model", "tiny", "--input", str(manifest),
                     "--output", str(output), "--workers", "1", "--executor", executor,
                     "--allow-protocols", "http", "--no-progress")

    assert result.returncode == 3, result.stderr[-3000:]  # 3: a failure a re-run may heal
    assert sorted(_SignedImages.served) == [f"/img/{index}.png" for index in range(3)]  # read whole
    secrets = (SIGNATURE, WRONG_SIGNATURE, TOKEN, KEY)
    streams = result.stdout + result.stderr
    assert not [secret for secret in secrets if secret in streams]
    files = [path for path in output.rglob("*") if path.is_file()]
    assert any(path.name == "images.parquet" for path in files)
    for path in files:  # every file, Parquet values decoded too (they may be compressed)
        content = path.read_bytes()
        if path.suffix == ".parquet":
            content += json.dumps(pq.read_table(path).to_pylist(), default=str).encode()
        assert not [secret for secret in secrets if secret.encode() in content], path
    images = pq.read_table(output / "images.parquet").to_pylist()
    assert [row["status"] for row in images] == ["labeled"] * 3 + ["failed"]
    assert all("X-Amz-Signature=***" in row["uri"] for row in images)
    coco = json.loads((output / "coco.json").read_text())
    assert all("X-Amz-Signature=***" in image["coco_url"] for image in coco["images"])
