"""Where fine-tuning starts: what a model folder prescribes before its UNet is trained.

A trained Stable Diffusion needs nothing: fine-tuning starts from its weights with the method's
reference learning rate. The calibrated `tiny` model has zeroed residual branches that no
gradient can move, so it prescribes seeded weights and its own learning rate
(:mod:`labeler.models.tiny.start`). A training command asks :func:`fine_tune_start` and applies
what it gets; it never asks which model it holds.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from labeler.models.tiny.model import is_tiny
from labeler.models.tiny.start import TINY_LR, tiny_start


@dataclass(frozen=True)
class FineTuneStart:
    """A model's prescribed start.

    Attributes:
        name: what it is, for the log.
        lr: the learning rate when the user gives none.
        prepare: fills the UNet's weights in place (after the method's own changes to it).
    """

    name: str
    lr: float
    prepare: Callable[[nn.Module], None]


TINY_START = FineTuneStart("tiny model: seeded noise in attn1.to_out and proj_out (docs/tiny-model.md)",
                           TINY_LR, tiny_start)


def fine_tune_start(model_dir: str | os.PathLike) -> FineTuneStart | None:
    """The start the diffusers folder ``model_dir`` prescribes, or None (start from its weights)."""
    return TINY_START if is_tiny(model_dir) else None
