#!/usr/bin/env bash
# Install the system packages the test suite needs (Debian/Ubuntu): Chromium for the headless
# browser test of `labeler preview` (tests/test_preview.py). Idempotent: does nothing when
# /usr/bin/chromium is already there. Run as root (or with sudo available).
#
# Optional Python side (not needed: the test falls back to Chromium's --dump-dom/--screenshot):
#   pip install playwright   # the test drives the system Chromium; no browser download.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    echo "chromium already installed: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium)"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "error: run as root or install sudo" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# Debian ships the browser as `chromium`; fonts make text render in screenshots.
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core ca-certificates
echo "installed: $(/usr/bin/chromium --version 2>/dev/null || echo chromium)"
