"""Consumer libraries that cannot share the labeler's environment, run in a subprocess.

``scripts/bootstrap.sh --test`` installs Ultralytics into ``<venv>/isolated/ultralytics``, a
folder that is not on the venv's ``sys.path``: with its dependencies it would replace the CPU
torch by a CUDA one, and it needs torchvision, whose PyPI wheels for torch 2.13 are CUDA builds
(``_C.so`` links ``libtorch_cuda.so``) that cannot be imported next to a CPU torch. Ultralytics'
dataset checker and label parser never import torchvision (only its version is read from the
package metadata), so they run with that folder prepended to ``PYTHONPATH``, in a subprocess,
so that nothing in the test session sees the unusable torchvision.
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
    """Run ``tests/isolated/<script>`` with ``<venv>/isolated/<name>`` importable; its stdout.

    Skips the test when that folder was not installed; fails it when the script fails.
    """
    packages = ISOLATED / name
    if not packages.is_dir():
        pytest.skip(f"{name} is not installed in {packages} (scripts/bootstrap.sh --test)")
    paths = [str(packages), str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]
    environment = {**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join(filter(None, paths))}
    done = subprocess.run([sys.executable, str(SCRIPTS / script), *args], env=environment,
                          check=False,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout
