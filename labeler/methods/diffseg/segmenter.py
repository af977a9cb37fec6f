"""The DiffSeg segmenter: one UNet pass per batch with self-attention captured, then the pure
algorithm of :mod:`labeler.methods.diffseg.algorithm`; with ``names``, the cross-attention of a
names row names the segments (:mod:`labeler.methods.diffseg.naming`); with a ``captioner``, each
image's names row holds its caption's nouns (:mod:`labeler.methods.diffseg.captions`)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from labeler.attention.capture import ResolutionMeanSink, RowSelection, capturing_processors
from labeler.attention.hooks import AttentionHooks
from labeler.attention.layers import select_layers, unet_attention_layers
from labeler.errors import UserError
from labeler.methods.base import ImageLabels, MethodProvenance
from labeler.methods.device_labels import RawLabels, device_step, finish_labels
from labeler.methods.diffseg.algorithm import (
    DiffSegOptions,
    _side_of,
    aggregate_attention,
    labels_from_proposals,
    merge_proposals,
    workspace,
)
from labeler.methods.diffseg.captions import UNNAMED_ID, caption_nouns, category_id
from labeler.methods.diffseg.method import categories
from labeler.methods.diffseg.naming import NameRule, name_segments, name_shares, pack_names
from labeler.methods.preprocess import images_to_model_input, label_grid_size
from labeler.models.backbone import Backbone
from labeler.models.captioner import Captioner
from labeler.timing import StageTimer


@dataclass(frozen=True)
class Vocabulary:
    """One image's names, where their tokens sit in its names row, and their categories.

    Attributes:
        names: the names (the run's ``names``, or the image's caption nouns).
        spans: each name's ``(start, stop)`` token positions in the names row.
        category_ids: the COCO category id of each name.
        unnamed_id: the category of a segment no name explains.
        caption: the caption the names come from (None for ``names``).
    """

    names: tuple[str, ...]
    spans: list[tuple[int, int]]
    category_ids: tuple[int, ...]
    unnamed_id: int
    caption: str | None = None

    @property
    def category_names(self) -> dict[int, str]:
        """Category id -> name of every category this image may use."""
        return {**dict(zip(self.category_ids, self.names)), self.unnamed_id: "segment"}


@dataclass(frozen=True)
class NamedRaw:
    """The device step's output for one image of a naming run.

    Attributes:
        raw: the labels as :func:`~labeler.methods.device_labels.device_step` gives them.
        name_scores: (L,) float64, the name score of each compact label 0..L-1.
        category_names: category id -> name for a caption run (its categories are per image),
            None for ``names`` (the run's categories name every id).
    """

    raw: RawLabels
    name_scores: np.ndarray
    category_names: dict[int, str] | None = None


class DiffSeg:
    """DiffSeg on a loaded backbone: zero-shot, class-agnostic segments.

    Per batch: whole images resized to the model's size, VAE posterior mean, one UNet pass at
    t=300 without added noise, conditioned on the empty prompt, with every self-attention layer
    captured (head mean in the processor, layer mean per resolution), then aggregation, KL merging
    and labeling. Labels are computed at the original size (capped at ``max_label_side`` on the
    long side, then nearest-resized), so nothing is centre-cropped away.

    The capturing processors are installed on the UNet once, here; each batch resets the sink.
    :meth:`close` puts the UNet's own processors back.

    Args:
        backbone: the loaded SD components.
        options: the ``[diffseg]`` settings (reference defaults when None): merging, timestep,
            label resolution, antialiasing.
        captioner: the loaded captioner of ``options.captioner`` (caption naming).
    """

    def __init__(self, backbone: Backbone, options: DiffSegOptions | None = None,
                 captioner: Captioner | None = None) -> None:
        self.backbone = backbone
        self.options = options or DiffSegOptions()
        self.timestep = self.options.timestep
        self.max_label_side = self.options.max_label_side
        self.antialias = self.options.antialias
        self.decode_side = self.options.decode_side(backbone.image_size)
        self.device = backbone.device
        self.categories = categories(self.options)
        layers = unet_attention_layers(backbone.unet)
        self.layers = select_layers(layers, "self")
        if not self.layers:
            raise UserError(f"model {backbone.name} has no self-attention layers")
        self.sink = ResolutionMeanSink()
        self.self_rows = RowSelection()
        processors = capturing_processors({layer.key: self.sink for layer in self.layers},
                                          selection=self.self_rows)
        self.names = self.options.names
        if (captioner is None) != (self.options.captioner is None):
            raise ValueError("pass the loaded captioner exactly when the settings name one")
        self.captioner = captioner
        if self.names:
            self.names_context, spans = self._names_context(
                self.names, backbone.encode_prompts(list(self.names)))
            count = len(self.names)
            self.vocabulary = Vocabulary(self.names, spans, tuple(range(1, count + 1)), count + 1)
        if self.options.naming:
            self.name_rule = NameRule(self.options.name_share, self.options.name_margin)
            self.cross_sink = ResolutionMeanSink()
            self.cross_rows = RowSelection()
            processors |= capturing_processors(
                {layer.key: self.cross_sink for layer in select_layers(layers, "cross")},
                selection=self.cross_rows,
            )
        self.hooks = AttentionHooks(backbone.unet, processors)
        self.timer = StageTimer()
        #: P, the (B, N, N) aggregated attention, reused batch after batch (``workspace``)
        self.aggregated: Tensor | None = None

    def _names_context(self, names: tuple[str, ...], encoded: Tensor | list[Tensor]
                       ) -> tuple[Tensor, list[tuple[int, int]]]:
        """The names row's context, (1, T, D), and each name's token positions in it.

        Args:
            names: the row's names, in order.
            encoded: each name's text-encoder states, (T, D) per name (as
                :meth:`~labeler.models.backbone.Backbone.encode_prompts` gives them).

        Caption nouns that do not fit one prompt are dropped from the end.
        """
        backbone = self.backbone
        empty = backbone.encode_prompts([""])[0]
        states, room = [], len(empty) - 2
        for name, row in zip(names, encoded):
            tokens = len(backbone.tokenizer(name).input_ids) - 2  # without BOS and EOS
            if tokens > room and self.captioner is not None:
                break
            states.append(row[1:1 + tokens])
            room -= tokens
        context, spans = pack_names(states, empty)
        return context[None], spans

    def _caption_vocabularies(self, images: list[np.ndarray]) -> tuple[Tensor, list[Vocabulary]]:
        """Caption the batch (one ``generate`` call, timed as ``caption``) and build each image's
        names row from its caption's nouns: the batch's distinct nouns go through the text
        encoder in one call (timed as ``nouns``), not kept beyond the batch (caption nouns are
        open-ended).

        Returns:
            contexts (B, T, D) and each image's :class:`Vocabulary`.
        """
        with self.timer.stage("caption"):
            captions = self.captioner.caption(images)
        with self.timer.stage("nouns"):
            nouns_of = [caption_nouns(caption) for caption in captions]
            distinct = list(dict.fromkeys(noun for nouns in nouns_of for noun in nouns))
            encoded = dict(zip(distinct, self.backbone.encode_prompts(distinct, cache=False)
                               if distinct else []))
            contexts, vocabularies = [], []
            for caption, nouns in zip(captions, nouns_of):
                context, spans = self._names_context(nouns, [encoded[noun] for noun in nouns])
                nouns = nouns[:len(spans)]
                contexts.append(context)
                vocabularies.append(Vocabulary(nouns, spans, tuple(category_id(n) for n in nouns),
                                               UNNAMED_ID, caption))
        return torch.cat(contexts), vocabularies

    def close(self) -> None:
        """Give the UNet its original attention processors back."""
        self.hooks.restore()

    def provenance(self) -> MethodProvenance:
        return MethodProvenance(
            method="diffseg",
            model=self.backbone.name,
            model_fingerprint=self.backbone.fingerprint,
            settings={
                "timestep": self.timestep,
                "kl_threshold": self.options.kl_threshold,
                "iterations": self.options.iterations,
                "grid_points": self.options.grid_points,
                "weights": self.options.weight_map,
                "max_label_side": self.max_label_side,
                "antialias": self.antialias,
                **({"names": list(self.names)} if self.names else {}),
                **({"captioner": self.options.captioner} if self.captioner else {}),
                **(self.options.model_dump(
                    include={"unnamed", "name_share", "name_margin", "merge_named", "conditioning"})
                   if self.options.naming else {}),
            },
        )

    def attention_maps(self, images: list[np.ndarray]) -> dict[int, Tensor]:
        """Capture the per-resolution self-attention of one UNet pass.

        Returns:
            ``{side: (B, side*side, side*side)}`` float32, head and layer means.
        """
        return self.capture(images)[0]

    def capture(self, images: list[np.ndarray]
                ) -> tuple[dict[int, Tensor], dict[int, Tensor] | None, list[Vocabulary] | None]:
        """One UNet call: the self-attention that makes the segments and, with names, the names
        row's cross-attention.

        Without names the batch is B rows conditioned on the empty prompt. With names and
        ``conditioning = "separate"`` it is 2B rows, the empty prompt's (self-attention captured)
        then the names row's (cross-attention captured), so the segments are those of a run
        without names; with ``conditioning = "names"``, B rows conditioned on the names. With a
        captioner, the batch is captioned first and each image's names row holds its nouns.

        Returns:
            self-attention ``{side: (B, side*side, side*side)}``, cross-attention
            ``{side: (B, side*side, T)}`` (None without names), float32 head and layer means, and
            each image's :class:`Vocabulary` (None without names).
        """
        backbone = self.backbone
        batch = len(images)
        with self.timer.stage("vae_encode"):
            pixels = images_to_model_input(images, backbone.image_size, self.antialias,
                                           device=backbone.device)
            latents = backbone.encode_images(pixels)
        empty = backbone.encode_prompts([""])
        contexts = [empty.expand(batch, -1, -1)]
        self.self_rows.rows = None
        vocabularies = None
        if self.captioner is not None:
            names, vocabularies = self._caption_vocabularies(images)
        elif self.names:
            names, vocabularies = self.names_context.expand(batch, -1, -1), [self.vocabulary] * batch
        if vocabularies is not None:
            if self.options.conditioning == "names":
                contexts = [names]
                self.cross_rows.rows = None
            else:
                contexts.append(names)
                latents = torch.cat([latents, latents])
                self.self_rows.rows, self.cross_rows.rows = slice(0, batch), slice(batch, 2 * batch)
            self.cross_sink.reset()
        context = torch.cat(contexts)
        timesteps = torch.full((len(context),), self.timestep, device=backbone.device, dtype=torch.long)
        self.sink.reset()
        self.hooks.ensure()
        with self.timer.stage("unet_capture"), torch.no_grad():
            backbone.unet(latents, timesteps, encoder_hidden_states=context)
        return self.sink.means(), (self.cross_sink.means() if vocabularies else None), vocabularies

    def label(self, images: list[np.ndarray]) -> list[ImageLabels]:
        """Label a batch of (H_i, W_i, 3) uint8 RGB images; one segment per label."""
        return [self.finish(raw) for raw in self.label_raw(images)]

    def finish(self, raw: RawLabels | NamedRaw) -> ImageLabels:
        """The host step of one image's :meth:`label_raw` output (thread-safe)."""
        if not isinstance(raw, NamedRaw):
            return finish_labels(raw)
        labels = finish_labels(raw.raw)
        names = None if raw.category_names is None else tuple(
            raw.category_names[int(category)] for category in labels.category_ids)
        return replace(labels, name_scores=raw.name_scores, category_names=names)

    @torch.no_grad()
    def label_raw(self, images: list[np.ndarray]) -> list[RawLabels | NamedRaw]:
        """The device step of :meth:`label`: up to the label grid's argmax, relabelled on an
        accelerator (see :func:`labeler.methods.device_labels.device_step`); with names, each
        segment named (:meth:`named`)."""
        attention, cross, vocabularies = self.capture(images)
        with self.timer.stage("aggregate"):
            self.aggregated = workspace(self.aggregated, attention)
            aggregated = aggregate_attention(attention, self.options.weight_map,
                                             out=self.aggregated[:len(images)])
        with self.timer.stage("merge"):
            proposals = merge_proposals(
                aggregated, self.options.schedule, self.options.grid_points, eps=self.options.eps
            )
        side = _side_of(aggregated.shape[-1])
        results = []
        for index, (image, image_proposals) in enumerate(zip(images, proposals)):
            height, width = image.shape[:2]
            grid = label_grid_size(height, width, self.max_label_side)
            with self.timer.stage("labeling"):
                labels, confidence = labels_from_proposals(image_proposals, side, grid)
                if cross is None:
                    results.append(device_step(labels, confidence, height, width))
                    continue
            image_cross = {s: maps[index:index + 1] for s, maps in cross.items()}
            results.append(self.named(labels, confidence, image_cross, vocabularies[index], height,
                                      width))
        return results

    def named(self, labels: Tensor, confidence: Tensor, cross: dict[int, Tensor],
              vocabulary: Vocabulary, height: int, width: int) -> NamedRaw:
        """One image's segments named (the device step of a naming run; timed as ``naming``).

        Args:
            labels: (h, w) segment ids on the label grid; confidence: (h, w).
            cross: ``{side: (1, side*side, T)}`` the names row's cross-attention.
            vocabulary: the image's names (an image whose caption has no noun: none, so every
                segment is unnamed).

        Returns:
            the labels with categories (a name's id; ``segment`` or no annotation where the
            segment abstains, per ``unnamed``), segments sharing a name merged when
            ``merge_named``, and each label's name score.
        """
        with self.timer.stage("naming"):
            if vocabulary.spans:
                shares = name_shares(cross, vocabulary.spans, tuple(labels.shape))[0]
            else:
                shares = torch.zeros((0, *labels.shape), device=labels.device)
            names, scores = name_segments(labels, shares, self.name_rule)
            labels = labels.long()
            if self.options.merge_named:
                labels, scores = merge_named(labels, names, scores)
            if self.options.unnamed == "drop":
                keep = (names >= 0).to(labels.device)
                labels = torch.where((labels >= 0) & keep[labels.clamp_min(0)], labels, -1)
            ids = np.array([*vocabulary.category_ids, vocabulary.unnamed_id], np.int64)
            category_of = ids[torch.where(names >= 0, names, len(vocabulary.names)).cpu().numpy()]
            present = labels[labels >= 0].unique().cpu()
            name_scores = scores.cpu()[present].double().numpy()
        raw = device_step(labels, confidence, height, width, category_of)
        return NamedRaw(raw, name_scores,
                        vocabulary.category_names if vocabulary.caption is not None else None)


def merge_named(labels: Tensor, names: Tensor, scores: Tensor) -> tuple[Tensor, Tensor]:
    """Segments that share a name merged into the lowest id among them (the reference's merge).

    Args:
        labels: (h, w) int64 segment ids, negative for none.
        names: (L,) int64 name per id, -1 for unnamed (never merged).
        scores: (L,) name scores.

    Returns:
        the relabelled (h, w) map, and (L,) scores where each kept id has the area-weighted mean
        score of the segments merged into it.
    """
    first = torch.arange(len(names), device=names.device)
    for name in names[names >= 0].unique():
        members = (names == name).nonzero()[:, 0]
        first[members] = members[0]
    inside = labels >= 0
    area = torch.bincount(labels[inside].cpu(), minlength=len(names)).double()
    merged = torch.zeros(len(names), dtype=torch.float64).index_add_(0, first.cpu(), area * scores.cpu().double())
    total = torch.zeros(len(names), dtype=torch.float64).index_add_(0, first.cpu(), area)
    relabelled = torch.where(inside, first.to(labels.device)[labels.clamp_min(0)], labels)
    return relabelled, (merged / total.clamp_min(1)).to(scores.dtype)
