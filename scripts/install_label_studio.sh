#!/usr/bin/env bash
# A real Label Studio server, the judge of `labeler export --format label-studio[-brush]`, in its
# own venv .venv/isolated/label-studio (tests/test_label_studio_server.py starts it on 127.0.0.1;
# the test is marked slow). Not in the labeler's venv: Label Studio pins Django, pandas, pyarrow
# and boto3 of its own. sentry-sdk 3 removed an option Label Studio 1.23 passes at start-up.
# Usage: scripts/install_label_studio.sh (after scripts/bootstrap.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
venv=.venv/isolated/label-studio
[ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
"$venv/bin/python" -m pip install --disable-pip-version-check -q "label-studio==1.23.2" \
  "sentry-sdk<3"
