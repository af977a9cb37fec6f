"""DiffewS's entry in the method table (see :mod:`labeler.methods.registry`).

The ``[diffews]`` table holds the inference settings (:class:`DiffewsOptions`) plus the support
set: ``--support-images``, ``--support-masks`` (label maps paired by stem, as for SLiMe) and
``--classes`` (background first). The run fingerprint covers the support set's content (images and
label maps), not its paths, so a changed support set on resume is refused like a changed setting.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import field_validator

from labeler.errors import UserError
from labeler.io.uris import InputError
from labeler.methods.annotations import AnnotatedImage, check_every_class_annotated, load_annotated
from labeler.methods.diffews.command import add_parser as add_commands
from labeler.methods.diffews.settings import DiffewsOptions
from labeler.methods.spec import MethodContext, MethodFlag, MethodSpec

if TYPE_CHECKING:
    from labeler.methods.diffews.segmenter import DiffewS


class DiffewsSettings(DiffewsOptions):
    """The ``[diffews]`` job table: inference settings and the support set.

    Attributes:
        support_images: folder or file URI of the support images.
        support_masks: folder or file URI of their label maps (values 0..K-1).
        classes: the K class names, background first (a comma-separated string is accepted).
    """

    support_images: str
    support_masks: str
    classes: tuple[str, ...]

    @field_validator("classes", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(name.strip() for name in value.split(","))
        return value

    @field_validator("classes")
    @classmethod
    def _background_and_one_class(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(value) < 2:
            raise ValueError("needs at least two names: background and one class")
        if len(set(value)) != len(value) or not all(value):
            raise ValueError(f"names must be unique and non-empty (got {list(value)!r})")
        return value

    def options(self) -> DiffewsOptions:
        """The inference settings alone."""
        return DiffewsOptions(**self.model_dump(include=set(DiffewsOptions.model_fields)))


def load_support(settings: DiffewsSettings) -> list[AnnotatedImage]:
    """The job's support set, checked against its classes.

    Raises:
        UserError: unpaired or unreadable files, values outside 0..K-1, a class without pixels.
    """
    try:
        samples = load_annotated(settings.support_images, settings.support_masks,
                                 len(settings.classes))
        check_every_class_annotated(samples, settings.classes)
    except (ValueError, InputError, OSError) as error:
        raise UserError(f"support set: {error}") from None
    return samples


def build(context: MethodContext) -> DiffewS:
    """Load the checkpoint and the support set, compute (or read) the banks: once per worker."""
    from labeler.methods.diffews.model import load_diffews_backbone
    from labeler.methods.diffews.segmenter import DiffewS

    settings: DiffewsSettings = context.settings
    samples = load_support(settings)
    backbone, weights = load_diffews_backbone(context.model, device=context.device,
                                              dtype=context.dtype)
    return DiffewS(backbone, weights, samples, settings.classes, settings.options())


def categories(settings: DiffewsSettings) -> list[dict]:
    """The support's classes without background, ids 1..K-1."""
    return [{"id": index, "name": name, "supercategory": "diffews"}
            for index, name in enumerate(settings.classes) if index > 0]


def check(context: MethodContext) -> None:
    """The support set reads and covers every class; the model has a support conv."""
    load_support(context.settings)  # first: a bad support is refused before torch is imported

    from labeler.methods.diffews.model import NotADiffewsModel, model_unet_dir, read_support_conv
    from labeler.models.locate import ModelLoadError

    try:
        read_support_conv(model_unet_dir(context.model))
    except (NotADiffewsModel, ModelLoadError, OSError) as error:
        raise UserError(f"--model: {error}") from None


def fingerprint(settings: DiffewsSettings) -> dict:
    """The inference settings, the classes and the support set's content digest (not its paths)."""
    from labeler.methods.diffews.support import support_set_digest

    values = settings.model_dump(mode="json", exclude={"support_images", "support_masks"})
    return {**values, "support_digest": support_set_digest(load_support(settings))}


SPEC = MethodSpec(
    name="diffews",
    summary="one-shot and few-shot labels from a support set, with a fine-tuned UNet "
            "(NeurIPS 2024; `labeler diffews train`)",
    settings=DiffewsSettings,
    build=build,
    categories=categories,
    check=check,
    flags=(
        MethodFlag("support_images", "DiffewS support images (folder or file)", "URI"),
        MethodFlag("support_masks", "their label maps, paired by file stem", "URI"),
        MethodFlag("classes", "class names, background first: background,a,b", "NAMES", is_list=True),
    ),
    fingerprint=fingerprint,
    commands=add_commands,
)
