"""DiffewS as a method of ``labeler run``: checks before the run, the worker's builder, categories.

``preflight`` runs on the driver before anything is written: it reads the support set, checks
the classes, the ``[diffews]`` settings and that the model has a support conv, and records the
support's content digest in the configuration (so a changed support set on resume is refused like
any other changed setting). ``build`` runs once per worker.
"""

from __future__ import annotations

import dataclasses

from labeler.methods.diffews.model import load_diffews_backbone, model_unet_dir, read_support_conv
from labeler.methods.diffews.segmenter import DiffewS, DiffewsOptions
from labeler.methods.diffews.support import class_supports, support_set_digest
from labeler.methods.slime.data import AnnotatedImage, load_annotated


def load_support(config, storage_options: dict | None = None) -> list[AnnotatedImage]:
    """The job's support set, checked against its classes.

    Raises:
        ValueError: unpaired or unreadable files, values outside 0..K-1, a class without pixels.
    """
    samples = load_annotated(config.support_images, config.support_masks, len(config.classes),
                             storage_options)
    class_supports(samples, tuple(config.classes))
    return samples


def preflight(config, storage_options: dict | None = None):
    """Check a DiffewS job before it starts; returns the config with ``support_digest`` set.

    Raises:
        ValueError: bad support set, settings or model (a base model without ``conv_in_ref``).
    """
    DiffewsOptions.from_mapping(config.diffews.options)
    samples = load_support(config, storage_options)
    read_support_conv(model_unet_dir(config.model, storage_options))
    return dataclasses.replace(config, support_digest=support_set_digest(samples))


def categories(config) -> list[dict]:
    """COCO categories: the support's classes without background, ids 1..K-1."""
    return [{"id": index, "name": name, "supercategory": "diffews"}
            for index, name in enumerate(config.classes) if index > 0]


def build(config, device: str | None = None) -> DiffewS:
    """Load the checkpoint and the support set, compute (or read) the banks: once per worker.

    Raises:
        ValueError: the support set changed since the run started (its digest differs).
    """
    samples = load_support(config)
    digest = support_set_digest(samples)
    if config.support_digest and digest != config.support_digest:
        raise ValueError(
            f"the support set changed since this run started (content {digest}, run "
            f"{config.support_digest}); restore it or start a new output"
        )
    backbone, weights = load_diffews_backbone(config.model, device=device or config.device,
                                              dtype=config.dtype)
    options = DiffewsOptions.from_mapping(config.diffews.options)
    return DiffewS(backbone, weights, samples, tuple(config.classes), options)
