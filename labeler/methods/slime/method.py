"""SLiMe's entry in the method table (see :mod:`labeler.methods.registry`).

The ``[slime]`` table holds the inference settings (:class:`SlimeOptions`) plus the embedding set
(``--embeddings``). Settings the table leaves out come from the set's recorded inference
settings, so only the ones the table names enter the run fingerprint, beside the sha256 of the
set's content (a refit written to the same path is a different run).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from labeler.errors import UserError
from labeler.io.listing import path_kind
from labeler.io.reading import read_file
from labeler.io.uris import redact_uri, relative_path_hint
from labeler.methods.slime.command import add_parser as add_commands
from labeler.methods.slime.settings import SlimeOptions
from labeler.methods.spec import MethodContext, MethodFlag, MethodSpec
from labeler.models.locate import ModelLoadError, is_local_model

if TYPE_CHECKING:
    from labeler.methods.slime.embedding_set import EmbeddingSet
    from labeler.methods.slime.segmenter import Slime


class SlimeSettings(SlimeOptions):
    """The ``[slime]`` job table: inference settings over the set's, and the set itself.

    Attributes:
        embeddings: local path or fsspec URI of the embedding set (``.safetensors``).
    """

    embeddings: str


def inference_options(settings: SlimeSettings, embedding_set: EmbeddingSet) -> SlimeOptions:
    """The set's recorded inference settings, overridden by those the job's table names."""
    given = settings.model_dump(include=settings.model_fields_set - {"embeddings"})
    return SlimeOptions.from_mapping({**embedding_set.inference, **given})


def load_set(settings: SlimeSettings) -> EmbeddingSet:
    """The job's embedding set.

    Raises:
        UserError: it does not exist or is not an embedding set.
    """
    if path_kind(settings.embeddings) != "file":
        raise UserError(f"--embeddings: embedding set {redact_uri(settings.embeddings)} does not "
                        f"exist{relative_path_hint(settings.embeddings)}")
    # parsing needs torch: imported only once the cheap check (the file exists) has passed
    from labeler.methods.slime.embedding_set import EmbeddingSet

    try:
        return EmbeddingSet.load(settings.embeddings)
    except FileNotFoundError as error:
        raise UserError(f"--embeddings: {error}") from None
    except (ValueError, OSError) as error:
        raise UserError(f"--embeddings {redact_uri(settings.embeddings)}: {error}") from None


def set_sha256(uri: str) -> str:
    """The sha256 (64 hex digits) of the embedding set file's bytes."""
    try:
        return hashlib.sha256(read_file(uri)).hexdigest()
    except FileNotFoundError:
        raise UserError(f"--embeddings: embedding set {redact_uri(uri)} does not exist") from None


def build(context: MethodContext) -> Slime:
    """SLiMe with the job's set, on the job's model (default: the set's)."""
    # imported here, on the workers: the driver validates settings without loading torch
    from labeler.methods.slime.segmenter import Slime
    from labeler.models.backbone import load_backbone

    embedding_set = load_set(context.settings)
    options = inference_options(context.settings, embedding_set)
    model = context.model or embedding_set.model
    backbone = load_backbone(model, device=context.device, dtype=context.dtype)
    return Slime(backbone, embedding_set, options, seed=context.seed)


def categories(settings: SlimeSettings) -> list[dict]:
    """The set's classes without background, ids 1..K-1."""
    return load_set(settings).categories()


def check(context: MethodContext) -> None:
    """The set exists and parses, its settings merge, and a local ``--model`` matches it."""
    embedding_set = load_set(context.settings)
    inference_options(context.settings, embedding_set)
    model = context.model
    if model is None or embedding_set.model_fingerprint is None or not is_local_model(model):
        return  # a hub model's configs are checked when the workers load it
    from labeler.methods.slime.embedding_set import config_fingerprint  # needs diffusers

    try:
        fingerprint = config_fingerprint(model)
    except ModelLoadError as error:
        raise UserError(f"--model: {error}") from None
    if fingerprint != embedding_set.model_fingerprint:
        raise UserError(
            f"--model {redact_uri(model)} does not match the embedding set: it was fit on "
            f"{embedding_set.model!r} (fingerprint {embedding_set.model_fingerprint}, this model "
            f"has {fingerprint}); apply it with --model {embedding_set.model} or drop --model"
        )


def models(context: MethodContext) -> list[str]:
    """The set's model, when ``--model`` does not replace it."""
    return [] if context.model else [load_set(context.settings).model]


def fingerprint(settings: SlimeSettings) -> dict:
    """The table's explicit settings and the sha256 of the set's content (not its path)."""
    given = settings.model_dump(mode="json", include=settings.model_fields_set - {"embeddings"})
    return {**given, "embedding_set_sha256": set_sha256(settings.embeddings)}


SPEC = MethodSpec(
    name="slime",
    summary="classes learned from 1-10 annotated images (ICLR 2024; `labeler slime fit`)",
    settings=SlimeSettings,
    build=build,
    categories=categories,
    check=check,
    flags=(MethodFlag("embeddings", "SLiMe embedding set (.safetensors)", "URI"),),
    fingerprint=fingerprint,
    commands=add_commands,
    models=models,
    settings_note="settings left out come from the embedding set (docs/slime.md)",
)
