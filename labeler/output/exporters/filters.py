"""Export filters: per-class minimum score, minimum area, maximum segments per image.

Filtered annotations are counted by reason (``filtered`` in the export summary), never dropped
silently; the run's own outputs are not changed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from labeler.errors import UserError


@dataclass(frozen=True)
class ExportFilters:
    """What an export keeps.

    Attributes:
        min_score: minimum ``score`` per category name; the key ``"*"`` applies to every class
            without its own entry.
        min_area: minimum mask area: pixels when >= 1, a fraction of the image's area when < 1.
        max_segments: keep at most this many annotations per image (highest scores first, ties
            by larger area); ``None``: no limit.
    """

    min_score: dict[str, float] = field(default_factory=dict)
    min_area: float = 0.0
    max_segments: int | None = None

    def __post_init__(self) -> None:
        if self.min_area < 0:
            raise UserError(f"min area must be >= 0 (got {self.min_area})")
        if self.max_segments is not None and self.max_segments < 1:
            raise UserError(f"max segments must be >= 1 (got {self.max_segments})")

    def check_classes(self, category_names: list[str]) -> None:
        """Refuse score thresholds for classes the output does not have."""
        unknown = sorted(set(self.min_score) - set(category_names) - {"*"})
        if unknown:
            raise UserError(
                f"min score for unknown classes {', '.join(unknown)} "
                f"(the output's classes: {', '.join(category_names)})"
            )

    def apply(self, width: int, height: int, annotations: list[dict], names: dict[int, str],
              counts: Counter) -> list[dict]:
        """The annotations of one (width x height) image that pass; ``counts`` gets the others
        by reason (``score``, ``area``, ``max_segments``)."""
        area_floor = self.min_area if self.min_area >= 1 else self.min_area * width * height
        kept = []
        for annotation in annotations:
            name = names[annotation["category_id"]]
            floor = self.min_score.get(name, self.min_score.get("*"))
            if floor is not None and annotation["score"] < floor:
                counts["score"] += 1
            elif annotation["area"] < area_floor:
                counts["area"] += 1
            else:
                kept.append(annotation)
        if self.max_segments is not None and len(kept) > self.max_segments:
            ranked = sorted(kept, key=lambda a: (-a["score"], -a["area"], a["id"]))
            chosen = {a["id"] for a in ranked[: self.max_segments]}
            counts["max_segments"] += len(kept) - len(chosen)
            kept = [a for a in kept if a["id"] in chosen]
        return kept


def parse_min_score(values: list[str]) -> dict[str, float]:
    """``["0.5", "wheel=0.7"]`` -> ``{"*": 0.5, "wheel": 0.7}`` (the CLI's ``--min-score``)."""
    thresholds: dict[str, float] = {}
    for value in values:
        name, _, number = value.rpartition("=")
        try:
            thresholds[name or "*"] = float(number)
        except ValueError:
            raise UserError(f"--min-score {value!r}: expected NUMBER or CLASS=NUMBER") from None
    return thresholds
