"""DiffSeg's entry in the method table (see :mod:`labeler.methods.registry`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from labeler.methods.diffseg.settings import DiffSegOptions
from labeler.methods.spec import MethodContext, MethodFlag, MethodSpec

if TYPE_CHECKING:
    from labeler.methods.diffseg.segmenter import DiffSeg

#: The model DiffSeg runs on when ``--model`` is not given (the reference's).
DEFAULT_MODEL = "CompVis/stable-diffusion-v1-4"


#: DiffSeg's one category: segments are class-agnostic.
CATEGORIES = [{"id": 1, "name": "segment", "supercategory": "segment"}]


def categories(settings: DiffSegOptions) -> list[dict]:
    """The run's categories: ``segment`` without names; with names, one per name (ids 1..N, in
    the given order), then ``segment`` (id N + 1) for segments no name explains unless they are
    dropped (``unnamed = "drop"``)."""
    if not settings.names:
        return [dict(category) for category in CATEGORIES]
    named = [{"id": i, "name": name, "supercategory": "name"} for i, name in enumerate(settings.names, 1)]
    if settings.unnamed == "segment":
        named.append({"id": len(named) + 1, "name": "segment", "supercategory": "segment"})
    return named


def build(context: MethodContext) -> DiffSeg:
    """DiffSeg on the job's model, with the job's ``[diffseg]`` settings."""
    # imported here, on the workers: the driver validates settings without loading torch
    from labeler.methods.diffseg.segmenter import DiffSeg
    from labeler.models.backbone import load_backbone

    backbone = load_backbone(context.model, device=context.device, dtype=context.dtype)
    return DiffSeg(backbone, context.settings)


SPEC = MethodSpec(
    name="diffseg",
    summary="zero-shot, class-agnostic segments from self-attention (CVPR 2024)",
    settings=DiffSegOptions,
    build=build,
    categories=categories,
    default_model=DEFAULT_MODEL,
    flags=(MethodFlag("names", "name segments from this vocabulary: person,car,road", "NAMES",
                      is_list=True),),
)
