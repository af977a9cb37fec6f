"""DiffSeg (CVPR 2024): zero-shot segments from Stable Diffusion self-attention.

``settings`` is the ``[diffseg]`` table, ``algorithm`` the pure aggregation, KL merging and
labeling (no model code), ``segmenter`` drives the model, ``method`` is the registry entry.
``labels_from_attention`` is the public pure entry point.

The algorithm (and torch) load on first use of these names, so reading the settings does not.
"""

from __future__ import annotations

import importlib

__all__ = ["DiffSegOptions", "labels_from_attention"]


def __getattr__(name: str) -> object:
    if name in __all__:
        return getattr(importlib.import_module("labeler.methods.diffseg.algorithm"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
