"""A third method for the tests, added as labeler expects: one package plus one registration.

``toy`` labels pixels by brightness: grey level (mean of R, G, B) at or above ``threshold`` is
category ``bright``, below is ``dark``. No model. Importing this package registers it; the
command line finds it through ``LABELER_METHODS=tests.toy_method``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import numpy as np
from pydantic import Field

from labeler.methods.base import ImageLabels, MethodProvenance, compact_labels
from labeler.methods.registry import register
from labeler.methods.spec import MethodSpec
from labeler.settings import Settings
from labeler.timing import StageTimer

if TYPE_CHECKING:
    from labeler.config import JobConfig

CATEGORIES = [{"id": 1, "name": "dark", "supercategory": "toy"},
              {"id": 2, "name": "bright", "supercategory": "toy"}]


class ToySettings(Settings):
    """The ``[toy]`` table."""

    threshold: int = Field(128, ge=1, le=255)


class ToySegmenter:
    """Brightness thresholding; follows :class:`labeler.methods.base.Segmenter`."""

    categories: ClassVar[list[dict]] = CATEGORIES

    def __init__(self, settings: ToySettings) -> None:
        self.settings = settings
        self.timer = StageTimer()
        self.device = "cpu"

    def provenance(self) -> MethodProvenance:
        return MethodProvenance(method="toy", settings=self.settings.to_dict())

    def label(self, images: list[np.ndarray]) -> list[ImageLabels]:
        """(H, W, 3) uint8 images -> label 0 dark, 1 bright (categories 1 and 2)."""
        results = []
        with self.timer.stage("threshold"):
            for image in images:
                grey = image.astype(np.float32).mean(axis=2)
                labels = (grey >= self.settings.threshold).astype(np.int32)
                confidence = np.abs(grey - self.settings.threshold) / 255.0
                results.append(compact_labels(labels, confidence, np.array([1, 2], np.int64)))
        return results


def build(config: JobConfig, device: str | None = None) -> ToySegmenter:
    return ToySegmenter(config.settings)


def categories(config: JobConfig) -> list[dict]:
    return [dict(category) for category in CATEGORIES]


SPEC = register(MethodSpec(
    name="toy",
    summary="brightness thresholding (a test method)",
    settings=ToySettings,
    build=build,
    categories=categories,
))
