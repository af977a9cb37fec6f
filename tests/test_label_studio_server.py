"""A real Label Studio server as the judge of the Label Studio exports (slow).

The server runs from ``<venv>/isolated/label-studio`` (``scripts/install_label_studio.sh``) on
127.0.0.1 with local-files serving, the document root one folder above the images (Label Studio
refuses a local storage at the document root itself). The exports are imported through the API,
brush with the default image URLs and polygons with ``--image-url-prefix
/data/local-files/?d=src/`` (the same URLs): every task's image answers 200 with the
image's bytes, and the regions read back equal the masks (brush: exactly; polygons: one region
per segment, its small fragments dropped).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests._output_fixture import write_review_output
from tests.consumers import assert_polygon_regions, export, reference_masks

pytestmark = pytest.mark.slow

SERVER = Path(sys.prefix) / "isolated" / "label-studio" / "bin" / "label-studio"
TOKEN = "labeler-test-token-0123456789"
PREFIX = "/data/local-files/?d=src/"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Api:
    """The server's REST API with the legacy token."""

    def __init__(self, base: str) -> None:
        self.base = base

    def call(self, method: str, path: str, body=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base + path, data=data, method=method,
            headers={"Authorization": f"Token {TOKEN}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            raw = response.read()
            return response.status, raw if not raw.startswith((b"{", b"[")) else json.loads(raw)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(api, image root's parent): a started server, stopped at the end of the module."""
    if not SERVER.exists():
        pytest.skip(f"Label Studio is not installed in {SERVER.parent.parent} "
                    "(scripts/install_label_studio.sh)")
    root = tmp_path_factory.mktemp("studio")
    write_review_output(str(root))
    port = _free_port()
    env = {**os.environ, "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
           "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(root), "SENTRY_DSN": "",
           "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true"}
    log = open(root / "server.log", "wb")  # noqa: SIM115 - closed at teardown
    process = subprocess.Popen(
        [str(SERVER), "start", "--no-browser", "--internal-host", "127.0.0.1", "-p", str(port),
         "--data-dir", str(root / "data"), "--username", "test@example.com", "--password",
         "labeler-test", "--user-token", TOKEN, "--enable-legacy-api-token"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    api = Api(f"http://127.0.0.1:{port}")
    try:
        for _ in range(600):
            if process.poll() is not None:
                pytest.fail("Label Studio exited:\n"
                            + (root / "server.log").read_text()[-3000:])
            try:
                if api.call("GET", "/health")[0] == 200:
                    break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail("Label Studio did not answer /health in 10 minutes")
        yield api, root
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
        log.close()


def _import(api: Api, root: Path, export_dir: Path, title: str) -> list[dict]:
    """A project with the export's labeling config and a local storage of the images; the
    export's tasks imported; the tasks as the server returns them."""
    config = (export_dir / "labeling_config.xml").read_text()
    _, project = api.call("POST", "/api/projects", {"title": title, "label_config": config})
    api.call("POST", "/api/storages/localfiles", {
        "project": project["id"], "path": str(root / "src"), "use_blob_urls": True,
        "title": "images"})
    tasks = json.loads((export_dir / "tasks.json").read_text())
    _, done = api.call("POST", f"/api/projects/{project['id']}/import", tasks)
    assert done["task_count"] == len(tasks)
    _, listed = api.call("GET", f"/api/tasks?project={project['id']}&page_size=100&fields=all")
    found = listed["tasks"] if isinstance(listed, dict) else listed
    return [api.call("GET", f"/api/tasks/{task['id']}")[1] for task in found]


def _check_images(api: Api, root: Path, tasks: list[dict]) -> None:
    for task in tasks:
        assert task["data"]["image"] == PREFIX + task["data"]["file_name"]
        status, body = api.call("GET", task["data"]["image"])
        assert status == 200 and body == (root / "src" / task["data"]["file_name"]).read_bytes()


def test_brush_export_shows_images_and_reads_back_exactly(server, tmp_path):
    brush = pytest.importorskip("label_studio_converter.brush")
    api, root = server
    output = root / "out"
    code, text = export(output, "label-studio-brush", tmp_path)  # the default prefix
    assert code == 0, text
    tasks = _import(api, root, tmp_path, "labeler brush")
    _check_images(api, root, tasks)
    reference = reference_masks(output)
    for task in tasks:
        (prediction,) = task["predictions"]
        assert prediction["model_version"].startswith("labeler-slime-")
        masks = reference[task["data"]["file_name"]]
        assert len(prediction["result"]) == len(masks)
        for result, mask in zip(prediction["result"], masks):
            height, width = mask.shape
            decoded = brush.decode_rle(result["value"]["rle"]).reshape(height, width, 4)[..., 3]
            assert np.array_equal(decoded > 0, mask.astype(bool))
            assert result["model_version"] == prediction["model_version"]
            assert 0.0 <= result["score"] <= 1.0
        assert task["meta"]["area"] == sum(int(m.sum()) for m in masks)


def test_polygon_export_keeps_one_region_per_segment(server, tmp_path):
    api, root = server
    output = root / "out"
    code, text = export(output, "label-studio", tmp_path, "--image-url-prefix", PREFIX,
                        "--as-annotations", "--tolerance", "0", "--fragment-min-area", "2")
    assert code == 0, text
    tasks = _import(api, root, tmp_path, "labeler polygons")
    _check_images(api, root, tasks)
    reference = reference_masks(output)
    for task in tasks:
        assert task["predictions"] == []
        (annotation,) = task["annotations"]
        name = task["data"]["file_name"]
        assert_polygon_regions(annotation["result"], reference[name], name)
