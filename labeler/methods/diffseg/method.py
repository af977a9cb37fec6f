"""DiffSeg's entry in the method table (see :mod:`labeler.methods.registry`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from labeler.errors import UserError
from labeler.methods.diffseg.settings import DiffSegOptions
from labeler.methods.spec import MethodContext, MethodFlag, MethodSpec
from labeler.models.fingerprint import named_weights_digest
from labeler.models.locate import ModelLoadError, locate_model

if TYPE_CHECKING:
    from labeler.methods.diffseg.segmenter import DiffSeg

#: The model DiffSeg runs on when ``--model`` is not given (the reference's).
DEFAULT_MODEL = "CompVis/stable-diffusion-v1-4"


#: DiffSeg's one category: segments are class-agnostic.
CATEGORIES = [{"id": 1, "name": "segment", "supercategory": "segment"}]


def categories(settings: DiffSegOptions) -> list[dict]:
    """The run's categories: ``segment`` without names; with names, one per name (ids 1..N, in
    the given order), then ``segment`` (id N + 1) for segments no name explains unless they are
    dropped (``unnamed = "drop"``). With a captioner, only ``segment`` (id 1, unless dropped):
    the nouns' categories are open (:func:`open_categories`)."""
    if settings.captioner:
        return [dict(category) for category in CATEGORIES] if settings.unnamed == "segment" else []
    if not settings.names:
        return [dict(category) for category in CATEGORIES]
    named = [{"id": i, "name": name, "supercategory": "name"} for i, name in enumerate(settings.names, 1)]
    if settings.unnamed == "segment":
        named.append({"id": len(named) + 1, "name": "segment", "supercategory": "segment"})
    return named


def open_categories(settings: DiffSegOptions) -> str | None:
    """A caption run's categories are the nouns its annotations use, listed at the merge (with
    the supercategory ``name``, as a vocabulary's)."""
    return "name" if settings.captioner is not None else None


def check(context: MethodContext) -> None:
    """Pre-flight: the captioner can be found offline, in seconds (as the model is)."""
    captioner = context.settings.captioner
    if captioner is None:
        return
    try:
        locate_model(captioner, component="captioner")
    except ModelLoadError as error:
        raise UserError(f"[diffseg] captioner: {error}") from None


def fingerprint(settings: DiffSegOptions) -> dict:
    """The table, and the digest of the captioner's weights when it is a folder
    (:func:`labeler.models.fingerprint.named_weights_digest`): a captioner rewritten at the same
    path is another run. Without one (no captioner, ``tiny``, a hub id) the key is left out, so
    fingerprints of earlier runs stand."""
    values = settings.to_dict()
    digest = settings.captioner and named_weights_digest(settings.captioner, "captioner")
    return {**values, "captioner_digest": digest} if digest else values


def build(context: MethodContext) -> DiffSeg:
    """DiffSeg on the job's model, with the job's ``[diffseg]`` settings (and its captioner,
    loaded on the same device, in the same dtype)."""
    # imported here, on the workers: the driver validates settings without loading torch
    from labeler.methods.diffseg.segmenter import DiffSeg
    from labeler.models.backbone import load_backbone
    from labeler.models.captioner import load_captioner

    backbone = load_backbone(context.model, device=context.device, dtype=context.dtype)
    captioner = None
    if context.settings.captioner is not None:
        captioner = load_captioner(context.settings.captioner, backbone.device, backbone.dtype)
    return DiffSeg(backbone, context.settings, captioner)


SPEC = MethodSpec(
    name="diffseg",
    summary="zero-shot, class-agnostic segments from self-attention (CVPR 2024)",
    settings=DiffSegOptions,
    build=build,
    categories=categories,
    open_categories=open_categories,
    default_model=DEFAULT_MODEL,
    check=check,
    fingerprint=fingerprint,
    flags=(MethodFlag("names", "name segments from this vocabulary: person,car,road", "NAMES",
                      is_list=True),
           MethodFlag("captioner", "name segments from each image's caption's nouns: tiny, "
                      "Salesforce/blip-image-captioning-base or a folder", "MODEL")),
)
