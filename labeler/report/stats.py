"""The numbers of a run report, gathered in one streaming pass over an output.

Images come from :class:`labeler.output.reader.OutputReader` (one shard's annotations in
memory at a time); every statistic is a fixed set of bins or counters, so memory does not grow
with the collection.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from labeler.output import schema
from labeler.output.reader import OutputReader

#: score histogram: bins of this width over [0, 1]
SCORE_BIN = 0.05
#: area histogram: bins of half a decade of the mask's share of its image, from 10^AREA_LOW
AREA_LOW = -6
AREA_BINS_PER_DECADE = 2
#: segments per image above this are counted in one last bin
MAX_SEGMENTS_BIN = 50


@dataclass
class RunStats:
    """What the report plots.

    Attributes:
        images, labeled, failed, annotations: counts.
        segments_per_image: labeled images by their number of annotations (the last bin holds
            :data:`MAX_SEGMENTS_BIN` and more).
        scores: annotations per score bin (index ``floor(score / SCORE_BIN)``, 1.0 in the last).
        areas: annotations per area bin (index over ``log10(area / image area)`` from
            :data:`AREA_LOW`, half decades; smaller shares in bin 0).
        per_class: annotations per category name.
        failures: failed images per reason.
    """

    images: int = 0
    labeled: int = 0
    failed: int = 0
    annotations: int = 0
    segments_per_image: Counter = field(default_factory=Counter)
    scores: list[int] = field(default_factory=lambda: [0] * round(1 / SCORE_BIN))
    areas: list[int] = field(default_factory=lambda: [0] * (-AREA_LOW * AREA_BINS_PER_DECADE))
    per_class: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)

    def add_image(self, row: dict, annotations: list[dict], names: dict[int, str]) -> None:
        """Count one image row and its annotation rows."""
        self.images += 1
        if row["status"] != schema.IMAGE_STATUS_LABELED:
            self.failed += 1
            self.failures[row["reason"] or "unknown"] += 1
            return
        self.labeled += 1
        self.annotations += len(annotations)
        self.segments_per_image[min(len(annotations), MAX_SEGMENTS_BIN)] += 1
        pixels = max(int(row["width"]) * int(row["height"]), 1)
        for annotation in annotations:
            self.per_class[names.get(annotation["category_id"], str(annotation["category_id"]))] += 1
            score = min(max(float(annotation["score"]), 0.0), 1.0)
            self.scores[min(int(score / SCORE_BIN), len(self.scores) - 1)] += 1
            share = max(int(annotation["area"]), 1) / pixels
            index = math.floor((math.log10(share) - AREA_LOW) * AREA_BINS_PER_DECADE)
            self.areas[min(max(index, 0), len(self.areas) - 1)] += 1

    def as_json(self) -> dict:
        """The statistics as plain JSON values (``report.json``)."""
        return {
            "images": self.images, "labeled": self.labeled, "failed": self.failed,
            "annotations": self.annotations,
            "segments_per_image": {str(k): v for k, v in sorted(self.segments_per_image.items())},
            "score_bin": SCORE_BIN, "scores": self.scores,
            "area_low_log10": AREA_LOW, "area_bins_per_decade": AREA_BINS_PER_DECADE,
            "areas": self.areas,
            "per_class": dict(self.per_class.most_common()),
            "failures": dict(self.failures.most_common()),
        }


def gather(reader: OutputReader) -> RunStats:
    """The statistics of every image of ``reader``'s output."""
    names = {c["id"]: c["name"] for c in reader.categories}
    stats = RunStats()
    for image in reader.images():
        stats.add_image(image.row, image.annotations, names)
    return stats
