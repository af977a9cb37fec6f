#!/usr/bin/env bash
# Create .venv and install labeler into it. Usage: scripts/bootstrap.sh [--test]
# torch goes first, pinned: a bare `torch` requirement resolved by pip can pull several GB of CUDA
# wheels onto a CPU machine (on machines with a CPU torch 2.13.0 on disk, pip takes that one).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip=(.venv/bin/python -m pip install --disable-pip-version-check -q)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  "${pip[@]}" "torch==2.13.0"
fi
if [ "${1:-}" = "--test" ]; then
  "${pip[@]}" -e ".[test,export-test]"
  # Datumaro (the cvat export's judge) pins pillow~=12, pyarrow~=25, pandas~=2.3 and opencv<5,
  # older than labeler's; its COCO importer runs on the newer ones, so it goes in without its
  # pins (the rest of its dependencies are in the export-test extra). `pip check` lists the four.
  "${pip[@]}" --no-deps "datumaro==1.13.12"
  # Ultralytics (the yolo-seg export's judge) outside the venv's sys.path (tests/consumers.py):
  # it needs torchvision, whose PyPI wheels are CUDA builds that cannot load beside a CPU torch
  "${pip[@]}" --no-deps --upgrade --target .venv/isolated/ultralytics \
    "ultralytics==8.4.190" "torchvision==0.28.0"
  if [ -x scripts/install_system_deps.sh ]; then scripts/install_system_deps.sh; fi
else
  "${pip[@]}" -e .
fi
