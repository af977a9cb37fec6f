"""Shared fixtures: the tiny model (built once per session), a real S3 server on 127.0.0.1."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

from tests.s3server import S3Server, S3ServerError
from tests.tcpproxy import TcpProxy

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# Ray starts its workers at niceness 15: beside any normal-priority load (a busy CI neighbour, the
# soak's busy loops) a LabelWorker then gets a few percent of a core, and a test measures Ray's
# scheduling priority instead of our logic. Read by every raylet the tests start (inherited).
os.environ.setdefault("RAY_worker_niceness", "0")
torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))


@pytest.fixture(scope="session", autouse=True)
def labeler_cache(tmp_path_factory) -> str:
    """A per-session model cache, so tests never depend on the user's ~/.cache."""
    cache = os.environ.get("LABELER_TEST_CACHE") or str(tmp_path_factory.mktemp("labeler-cache"))
    os.environ["LABELER_CACHE"] = cache
    return cache


@pytest.fixture(scope="session")
def tiny_backbone(labeler_cache):
    from labeler.models.backbone import load_backbone

    return load_backbone("tiny", device="cpu")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A running S3 server for the whole session, with an empty data directory.

    Yields the :class:`~tests.s3server.S3Server` handle: ``endpoint_url``, ``access_key``,
    ``secret_key``, ``storage_options`` (for fsspec/s3fs), ``env`` (``AWS_ENDPOINT_URL`` and
    friends), ``filesystem()``, ``create_bucket(name)`` and ``restart()``. The server process
    (its own process group) is killed at teardown. A missing binary fails the test with the
    name of the package to install; it never skips.
    """
    data_dir = tmp_path_factory.mktemp("s3data") / "data"
    try:
        server = S3Server(data_dir)
        server.start()
    except S3ServerError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_proxy(s3_server: S3Server) -> Iterator[TcpProxy]:
    """A :class:`~tests.tcpproxy.TcpProxy` in front of the session S3 server (forwarding).

    Clients pointed at ``s3_proxy.url`` see a storage outage when a test calls ``refuse()``,
    and the test learns from ``refused`` when they met it. Tests that refuse must ``forward()``.
    """
    with TcpProxy(s3_server.host, s3_server.port) as proxy:
        yield proxy


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    """The session S3 server, with ``AWS_ENDPOINT_URL`` and credentials set for this test only.

    Plain ``s3://`` URIs with no storage options then reach the local server. s3fs caches
    filesystem instances, so the cache is cleared before and after the test.
    """
    import s3fs

    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
    yield s3_server
    s3fs.S3FileSystem.clear_instance_cache()


def pytest_collection_modifyitems(config, items):
    """GPU tests run only with a CUDA device (select them with ``-m gpu``)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
