"""labeler: batch dataset labeling with Stable Diffusion attention (DiffSeg, SLiMe).

``labeler.Labeler``, ``labeler.LabelResult`` and ``labeler.run`` are the Python API (see
:mod:`labeler.api`); they are loaded on first use, so ``import labeler`` stays light.
"""

from typing import Any

__version__ = "0.1.0"

__all__ = ["LabelResult", "Labeler", "__version__", "run"]

_API = ("Labeler", "LabelResult", "run")


def __getattr__(name: str) -> Any:
    if name in _API:
        from labeler import api

        return getattr(api, name)
    raise AttributeError(f"module 'labeler' has no attribute {name!r}")
