#!/usr/bin/env bash
# The FiftyOne judge of `labeler export --format fiftyone` in its own venv, .venv/isolated/fiftyone
# (tests/consumers.py runs it there; the test is marked slow). Not in the labeler's venv: FiftyOne's
# dependencies downgrade OpenCV and move botocore past the pin of s3fs's aiobotocore.
# Installed from a frozen list with --no-deps: resolving fiftyone's ~120 dependencies takes pip
# over ten minutes. Usage: scripts/install_fiftyone.sh (after scripts/bootstrap.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
venv=.venv/isolated/fiftyone
[ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
"$venv/bin/python" -m pip install --disable-pip-version-check -q --no-deps \
  -r scripts/fiftyone-requirements.txt
