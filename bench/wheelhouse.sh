#!/usr/bin/env bash
# Build the wheelhouse bench/gpu_suite.sh installs offline on the GPU machine (which reaches no
# package registry): cp312 manylinux x86_64 wheels of exactly bench/gpu_requirements.txt (what
# the suite imports and the machine's image lacks), downloaded here with pip, no dependency
# resolution. Prints the wheelhouse's size: what travels with the tree must stay under 64 MiB.
#
#   bench/wheelhouse.sh [DIR]      # default: wheelhouse/ (git-ignored)
#   then, on the GPU machine:  bench/gpu_suite.sh --wheelhouse DIR
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
DIR="${1:-$REPO/wheelhouse}"
PIP="${PIP:-$REPO/.venv/bin/python -m pip}"
mkdir -p "$DIR"
$PIP download --quiet --dest "$DIR" --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --abi cp312 --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux_2_17_x86_64 -r "$REPO/bench/gpu_requirements.txt"
ls -1 "$DIR"
du -sh "$DIR" | awk '{print "wheelhouse: " $1 " in " $2}'
