"""DiffSeg's settings, the ``[diffseg]`` job table: one typed model, each default written once.

Kept apart from the algorithm (no torch import), so ``labeler run`` refuses a bad setting at once.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Literal

from pydantic import Field, field_validator, model_validator

from labeler.settings import Settings

DEFAULT_EPS: float = 1e-12
#: Naming: minimum mean share of the text attention a segment's name must take (calibrated on
#: `tiny`'s colour world, docs/diffseg.md "Naming").
DEFAULT_NAME_SHARE: float = 0.15
#: Naming: minimum ratio of the best name's mean share to the second's.
DEFAULT_NAME_MARGIN: float = 1.1


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_sequence(value: object) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def _is_integer(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_threshold(value: object) -> float:
    if not _is_number(value):
        raise ValueError(f"KL thresholds must be numbers, got {value!r}")
    if math.isnan(value) or value <= 0:
        raise ValueError(f"KL thresholds must be > 0, got {value!r}")
    return float(value)


def _check_positive_int(name: str, value: object) -> None:
    if not _is_integer(value) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _check_thresholds(thresholds: Sequence[float]) -> tuple[float, ...]:
    if not _is_sequence(thresholds):
        raise ValueError(f"thresholds must be a sequence of numbers, got {thresholds!r}")
    if len(thresholds) < 1:
        raise ValueError("thresholds must hold at least one value (one per merge iteration)")
    return tuple(_check_threshold(t) for t in thresholds)


def _check_eps(eps: object) -> float:
    if not _is_number(eps):
        raise ValueError(f"eps must be a number, got {eps!r}")
    if not 0 < eps < 1:
        raise ValueError(f"eps must lie in (0, 1), got {eps!r}")
    return float(eps)


def _normalise_weights(
    weights: Mapping[int | str, float] | Sequence[tuple[int, float]] | None,
) -> tuple[tuple[int, float], ...] | None:
    """Validate per-side weights; return ``((side, weight), ...)`` sorted by decreasing side.

    Sides may be given as strings (TOML table keys: ``[diffseg.weights] 64 = 0.5``).
    """
    if weights is None:
        return None
    items = list(weights.items()) if isinstance(weights, Mapping) else list(weights)
    if not items:
        raise ValueError("weights must not be empty (use None for the default weights)")
    out: dict[int, float] = {}
    for item in items:
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise ValueError(f"weights must map side -> weight, got entry {item!r}")
        side, weight = item
        if isinstance(side, str) and side.strip().isdigit():
            side = int(side)
        if not _is_integer(side) or side < 1:
            raise ValueError(f"weight side must be an integer >= 1, got {side!r}")
        if not _is_number(weight):
            raise ValueError(f"weight for side {side} must be a number, got {weight!r}")
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"weight for side {side} must be finite and >= 0, got {weight!r}")
        if side in out:
            raise ValueError(f"duplicate weight for side {side}")
        out[int(side)] = float(weight)
    if not any(w > 0 for w in out.values()):
        raise ValueError("at least one weight must be > 0")
    return tuple(sorted(out.items(), reverse=True))


class DiffSegOptions(Settings):
    """DiffSeg's settings, the ``[diffseg]`` job table (reference defaults: COCO-Stuff-27).

    Attributes:
        kl_threshold: tau used at every merge iteration (unless ``thresholds`` is given).
        iterations: number of merge iterations (iteration 0 plus greedy reductions), >= 1.
        grid_points: anchors per axis (``grid_points ** 2`` anchors).
        weights: per-side aggregation weights ``{side: weight}``, used as given (no
            renormalisation); None means weights proportional to side. Stored as a tuple of
            ``(side, weight)`` pairs so the options stay hashable.
        eps: lower clamp applied before logs in the KL distance.
        thresholds: explicit per-iteration taus; when given it overrides ``kl_threshold`` and
            ``iterations`` (its length is the number of iterations).
        timestep: the UNet timestep of the single pass (the reference's 300, no noise added).
        max_label_side: the largest side at which proposals are upsampled before argmax.
        antialias: antialias the resize to the model size (the reference does not).
        names: a vocabulary: each segment is named from the cross-attention of the names' tokens
            (categories become the names); None = class-agnostic ``segment``s.
        unnamed: what becomes of a segment no name explains: ``segment`` (kept, category
            ``segment``) or ``drop`` (no annotation).
        name_share: a segment takes a name only if the name's mean share of the text attention
            over it is at least this.
        name_margin: ... and at least this times the second name's.
        merge_named: segments that share a name become one annotation (the reference merges
            them); by default they stay separate instances.
        conditioning: ``separate`` (default): the segments come from the empty-prompt row and the
            names from a second row of the same UNet call, so names never change the segments;
            ``names``: one pass conditioned on the names (the reference's captioned pass; its
            self-attention, so the segments, depend on the names).
        captioner: caption naming (the reference's path): a captioning model (``tiny``, a
            Hugging Face id such as ``Salesforce/blip-image-captioning-base``, or a folder saved
            with ``save_pretrained``) whose caption's nouns are each image's names; exclusive
            with ``names``. Categories: the nouns the run's annotations use, ids derived from
            the noun (:mod:`labeler.methods.diffseg.captions`).
    """

    kl_threshold: float = Field(1.1, gt=0, allow_inf_nan=False)
    iterations: int = Field(3, ge=1)
    grid_points: int = Field(16, ge=1)
    weights: tuple[tuple[int, float], ...] | None = None
    eps: float = Field(DEFAULT_EPS, gt=0, lt=1)
    thresholds: tuple[float, ...] | None = Field(None, min_length=1)
    timestep: int = Field(300, ge=0, le=999)
    max_label_side: int = Field(1024, ge=1)
    antialias: bool = True
    names: tuple[str, ...] | None = Field(None, min_length=1)
    unnamed: Literal["segment", "drop"] = "segment"
    name_share: float = Field(DEFAULT_NAME_SHARE, ge=0, le=1)
    name_margin: float = Field(DEFAULT_NAME_MARGIN, ge=1, allow_inf_nan=False)
    merge_named: bool = False
    conditioning: Literal["separate", "names"] = "separate"
    captioner: str | None = Field(None, min_length=1)

    @field_validator("names", mode="before")
    @classmethod
    def _names(cls, value: object) -> object:
        if _is_sequence(value):
            if not all(isinstance(name, str) for name in value):
                raise ValueError(f"names must be strings, got {list(value)!r}")
            names = tuple(" ".join(name.split()) for name in value)
            if not all(names) or len(set(names)) != len(names):
                raise ValueError(f"names must be unique and non-empty, got {list(value)!r}")
            if "segment" in names:
                raise ValueError("'segment' is the category of unnamed segments; pick another name")
            return names
        return value

    @model_validator(mode="after")
    def _one_vocabulary(self) -> DiffSegOptions:
        if self.names and self.captioner:
            raise ValueError("names and captioner are exclusive: names is one vocabulary for every "
                             "image, captioner takes each image's from its caption")
        return self

    @property
    def naming(self) -> bool:
        """Segments are named (from ``names`` or from captions)."""
        return bool(self.names or self.captioner)

    @field_validator("weights", mode="before")
    @classmethod
    def _weights(cls, value: object) -> object:
        return _normalise_weights(value)

    @field_validator("thresholds", mode="before")
    @classmethod
    def _thresholds(cls, value: object) -> object:
        return None if value is None else _check_thresholds(value)

    def decode_side(self, input_side: int) -> int | None:
        """The side images may be decoded down to for a model of ``input_side``: that side,
        except in the reference's parity mode (``antialias = false``: the resize samples the
        full-size pixels), which decodes at full size (None)."""
        return input_side if self.antialias else None

    @property
    def schedule(self) -> tuple[float, ...]:
        """Per-iteration thresholds actually used."""
        if self.thresholds is not None:
            return self.thresholds
        return (float(self.kl_threshold),) * self.iterations

    @property
    def weight_map(self) -> dict[int, float] | None:
        """Weights as a ``{side: weight}`` dict, or None for the default weights."""
        return None if self.weights is None else dict(self.weights)
