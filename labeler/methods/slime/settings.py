"""SLiMe's inference settings (the ``[slime]`` table without the embedding set): one typed model.

Kept apart from the algorithm (no torch import), so ``labeler run`` refuses a bad setting at once.
The defaults are the reference code's; an embedding set records some of them at fit time
(:func:`recorded_inference_defaults`), and a job's ``[slime]`` table wins over the set.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, field_validator

from labeler.errors import UserError
from labeler.settings import Settings, parse_settings

#: CLIP's context length: BOS, the class tokens, EOS.
MAX_TOKENS = 77


def validate_classes(classes: tuple[str, ...]) -> None:
    """K >= 2 unique, non-empty names; K-1 must fit the 75 prompt positions after BOS."""
    if len(classes) < 2:
        raise UserError("SLiMe needs at least two classes: background and one part")
    if len(set(classes)) != len(classes) or any(not name.strip() for name in classes):
        raise UserError(f"class names must be unique and non-empty, got {list(classes)}")
    if len(classes) > MAX_TOKENS - 2:
        raise UserError(f"at most {MAX_TOKENS - 2} classes fit in the 77-token prompt")

#: The reference's canvas side: patch sizes are given in these pixels.
REFERENCE_CANVAS = 512


class SlimeOptions(Settings):
    """SLiMe inference settings (reference defaults; the embedding set may record others).

    Attributes:
        timestep: the UNet timestep (reference ``--test_t 100``), or an inclusive range
            ``(low, high)`` from which one timestep is drawn per patch, from the patch's seeded
            generator (the reference's ``--test_t LOW HIGH``). A TOML list ``[low, high]``.
        patches_per_side: n of the n x n patch grid (reference 2; its PASCAL configs use 1).
        patch_size: patch side in the reference's 512-pixel units, scaled to the actual model
            input size; None = 400 (reference 400; its PASCAL configs use 512).
        cover_edges: spread patch starts to reach the far border (see :func:`patch_grid`).
        patch_threshold: class gate on the per-patch cross-attention maximum (reference 0.2);
            None disables the gate.
        background_threshold: zero the background weights at or below their mean (reference).
        threshold_first_kept: threshold the first kept row even when it is not the background
            (the reference's behaviour when the background fails the gate).
        rescale: per-class affine rescale of WAS onto the cross-attention range (reference).
        normalization: ``tokens`` (reference inference: 77-token softmax per head and layer, then
            averaged) or ``classes`` (the training normalisation: softmax over the K classes of
            the averaged logits).
        paper_mode: the paper's inference instead of the code's: one whole-image pass, no gate,
            no background threshold, no rescale, ``classes`` normalisation, WAS resized and
            argmax. Overrides the settings above.
        posterior_mean: use the VAE posterior mean instead of a sample (the reference samples).
        channel_order: ``rgb`` or ``bgr`` input to the VAE; None = what the set was fit with.
        antialias: antialias the resize of large images to the model size (the reference does
            not; without it large photos alias).
        resize: ``float`` (bilinear in float32, ``antialias`` applies) or ``reference`` (OpenCV
            uint8 ``INTER_LINEAR`` rounded to whole grey levels, as the reference; see
            :func:`labeler.methods.preprocess.resize_image`).
        max_label_side: labels are computed at the original size capped at this side, then
            nearest-resized to the original size.
        input_size: the model input side; None = the model's native size (512 for SD).
        patch_batch: patches per UNet call.
        was_impl: ``fused`` (default) or ``explicit`` WAS-attention.
    """

    timestep: int | tuple[int, int] = 100
    patches_per_side: int = Field(2, ge=1)
    patch_size: int | None = Field(None, ge=1, le=REFERENCE_CANVAS)
    cover_edges: bool = True
    patch_threshold: float | Literal[False] | None = 0.2
    background_threshold: bool = True
    threshold_first_kept: bool = False
    rescale: bool = True
    normalization: Literal["tokens", "classes"] = "tokens"
    paper_mode: bool = False
    posterior_mean: bool = False
    channel_order: Literal["rgb", "bgr"] | None = None
    antialias: bool = True
    resize: Literal["float", "reference"] = "float"
    max_label_side: int = Field(1024, ge=1)
    input_size: int | None = Field(None, ge=64, multiple_of=64)
    patch_batch: int = Field(8, ge=1)
    was_impl: Literal["fused", "explicit"] = "fused"

    @field_validator("timestep", mode="before")
    @classmethod
    def _timestep_or_range(cls, value: Any) -> int | tuple[int, int]:
        """An int in [0, 999] or an inclusive ``[low, high]`` range within it (``[t, t]`` is t)."""
        if isinstance(value, (list, tuple)):
            if len(value) != 2 or not all(_is_int(v) for v in value):
                raise ValueError(f"must be an integer or [low, high] (got {list(value)!r})")
            low, high = (int(v) for v in value)
            if not 0 <= low <= high <= 999:
                raise ValueError(f"range must satisfy 0 <= low <= high <= 999 (got {list(value)!r})")
            return low if low == high else (low, high)
        if not _is_int(value) or not 0 <= value <= 999:
            raise ValueError(f"must be an integer in [0, 999] or [low, high] (got {value!r})")
        return int(value)

    @field_validator("patch_threshold")
    @classmethod
    def _false_disables(cls, value: float | bool | None) -> float | None:
        return None if value is False else value

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> SlimeOptions:
        """Build from a ``[slime]`` table; unknown keys and bad values are a one-line UserError."""
        return parse_settings(cls, values, "slime")

    def effective(self) -> SlimeOptions:
        """The settings actually used: ``paper_mode`` expanded."""
        if not self.paper_mode:
            return self
        return self.model_copy(update={
            "patches_per_side": 1, "patch_size": None, "patch_threshold": None,
            "background_threshold": False, "threshold_first_kept": False, "rescale": False,
            "normalization": "classes",
        })


    def decode_side(self, input_side: int) -> int | None:
        """The side images may be decoded down to for a model input of ``input_side``: that
        side, except in the reference's resize (``resize = "reference"``, OpenCV on uint8) and
        without antialiasing, which sample the full-size pixels and decode at full size (None)."""
        return input_side if self.resize == "float" and self.antialias else None

    def timestep_range(self) -> tuple[int, int]:
        """The inclusive timestep range (low == high for a single timestep)."""
        if isinstance(self.timestep, tuple):
            return self.timestep
        return self.timestep, self.timestep


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


#: The inference settings a new embedding set records (fit or import): the reference's.
RECORDED_INFERENCE_KEYS = ("timestep", "patches_per_side", "patch_size", "patch_threshold")


def recorded_inference_defaults() -> dict[str, Any]:
    """What a new embedding set records as its inference settings (one place for fit and import)."""
    defaults = SlimeOptions()
    return {key: getattr(defaults, key) for key in RECORDED_INFERENCE_KEYS}
