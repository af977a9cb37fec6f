"""Shared fixtures: the tiny model (built once per session), synthetic images."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
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
