"""A fourth method for the tests, added as labeler expects: one package plus one registration.

``toy`` labels pixels by brightness: grey level (mean of R, G, B) at or above ``threshold`` is
the second category (``bright``), below is the first (``dark``). No model. It has a resource (a
file naming its two categories, :mod:`tests.toy_method.names`) whose digest enters the run
fingerprint and every annotation's ``resource_digest``, and a command of its own
(``labeler toy info``, :mod:`tests.toy_method.command`). Importing this package registers it;
the command line finds it through ``LABELER_METHODS=tests.toy_method``. Nothing outside this
package names it.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from labeler.methods.base import ImageLabels, MethodProvenance, compact_labels
from labeler.methods.registry import register
from labeler.methods.spec import MethodContext, MethodSpec
from labeler.settings import Settings
from labeler.timing import StageTimer
from tests.toy_method.command import add_parser
from tests.toy_method.names import CategoryNames, category_names


class ToySettings(Settings):
    """The ``[toy]`` table.

    Attributes:
        threshold: grey level from which a pixel is bright.
        names: a text file (path or URI) naming the two categories, one per line; None: dark
            and bright.
    """

    threshold: int = Field(128, ge=1, le=255)
    names: str | None = None


class ToySegmenter:
    """Brightness thresholding; follows :class:`labeler.methods.base.Segmenter`."""

    categories: list[dict]

    def __init__(self, settings: ToySettings) -> None:
        self.settings = settings
        self.names: CategoryNames = category_names(settings.names)
        self.categories = self.names.categories()
        self.timer = StageTimer()
        self.device = "cpu"

    def provenance(self) -> MethodProvenance:
        return MethodProvenance(method="toy", resource_digest=self.names.digest,
                                settings=self.settings.to_dict())

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


def build(context: MethodContext) -> ToySegmenter:
    return ToySegmenter(context.settings)


def categories(settings: ToySettings) -> list[dict]:
    return category_names(settings.names).categories()


def check(context: MethodContext) -> None:
    """The names file reads and names two categories."""
    category_names(context.settings.names)


def fingerprint(settings: ToySettings) -> dict:
    """The threshold and the names file's content digest (not its path)."""
    return {"threshold": settings.threshold, "names_digest": category_names(settings.names).digest}


SPEC = register(MethodSpec(
    name="toy",
    summary="brightness thresholding (a test method)",
    settings=ToySettings,
    build=build,
    categories=categories,
    check=check,
    fingerprint=fingerprint,
    commands=add_parser,
    settings_note="names: a file naming the two categories",
))
