"""DiffewS's inference settings (the ``[diffews]`` table without the support set): one typed model.

Kept apart from the model code (no torch import), so ``labeler run`` refuses a bad setting at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field

from labeler.settings import Settings, parse_settings

#: The reference's relative threshold: foreground where m > 0.25 x max(m) (per image).
REFERENCE_RATIO = 0.25
#: The paper's best absolute pixel threshold (its appendix A.4: tau = 0.15).
DEFAULT_LEVEL = 0.15
#: Default minimum of max(m) for a class to count as present (docs/diffews.md).
DEFAULT_PRESENCE = 0.5


class DiffewsOptions(Settings):
    """DiffewS inference settings.

    Attributes:
        rule: ``absolute`` (absence-aware, default; labeler's own, on the float soft map) or
            ``relative`` (the reference's decision, pixel for pixel: its uint8 read-back of the
            decoded mask, channel mean ``> ratio x`` the 3-channel max).
        level: absolute rule: pixel threshold on the soft map, in [0, 1].
        presence: absolute rule: minimum max of the soft map for the class to be present.
        ratio: relative rule: pixel threshold as a fraction of the per-image max.
        context_tokens: 2 (``[BOS, EOS]``, the reference's inference) or 77 (its training ids:
            ``[BOS, EOS]`` then ``"!"``, the SD-2.1 tokenizer's pad token, whatever the model's).
        input_size: model input side; None = the model's (512 for SD).
        antialias: antialiased bilinear squash-resize of images (default, the closer to the
            reference, which resizes uint8 with PIL bilinear, an antialiasing filter); False =
            plain bilinear without antialiasing (closer to DiffSeg's and SLiMe's references).
        max_label_side: labels are decided at the original size capped at this side.
        cache_banks: keep support banks in ``$LABELER_CACHE/diffews-banks`` across runs.
    """

    rule: Literal["absolute", "relative"] = "absolute"
    level: float = Field(DEFAULT_LEVEL, ge=0, le=1)
    presence: float = Field(DEFAULT_PRESENCE, ge=0, le=1)
    ratio: float = Field(REFERENCE_RATIO, gt=0, le=1)
    context_tokens: Literal[2, 77] = 2
    input_size: int | None = Field(None, ge=64, multiple_of=64)
    antialias: bool = True
    max_label_side: int = Field(1024, ge=1)
    cache_banks: bool = True

    def decode_side(self, input_side: int) -> int | None:
        """The side images may be decoded down to for a model input of ``input_side``: that
        side, except in the reference's decision (``rule = "relative"``, pixel for pixel) and
        without antialiasing (the resize samples the full-size pixels): full size (None)."""
        return input_side if self.rule == "absolute" and self.antialias else None

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> DiffewsOptions:
        """From a ``[diffews]`` table; unknown keys and bad values are a one-line UserError."""
        return parse_settings(cls, values, "diffews")
