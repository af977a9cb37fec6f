"""Colour names for the `tiny` model: words whose cross-attention finds their colour.

The calibrated tiny UNet's cross-attention (:mod:`labeler.models.tiny.calibration`) scores a text
state ``e`` at a pixel by ``features @ e`` against the pixel's latent colour/texture features,
plus a sink term along ``sink``. Its tokenizer spells every word byte by byte, so no word means
anything. This module gives it a small vocabulary of colour words without changing a single
existing weight (DiffSeg, SLiMe and DiffewS results stay as they were):

* each word of :data:`COLOUR_NAMES` becomes one added token of the tokenizer (whole word,
  case-insensitive), with a new row of the text encoder's token embedding;
* that row is fitted (a few hundred Adam steps from the EOS row, deterministic) so that the
  text encoder's state of the word, encoded alone (``[BOS] word [EOS]``), has the feature
  coordinates ``features @ e`` of :func:`colour_targets` (pointing at the word's hue in the
  latent, read from the calibrated VAE encoder) and the empty prompt's padding's sink
  coordinate, so the word takes the attention of pixels of its colour and little elsewhere.

Words outside the vocabulary keep their byte tokens and mean nothing.
"""

from __future__ import annotations

import torch
from torch import nn

#: The colour words tiny knows, with their RGB: six hues 47-78 degrees apart in the latent's
#: chroma plane. Words cannot say luminance (the text states cannot reach the luminance feature,
#: see :func:`colour_targets`), so there is no white, black or grey, and orange sits too close to
#: red and yellow.
COLOUR_NAMES = {
    "red": (220, 40, 40),
    "yellow": (240, 215, 50),
    "green": (40, 170, 60),
    "cyan": (40, 190, 210),
    "blue": (40, 70, 220),
    "purple": (150, 60, 190),
}
#: A colour word's cross-attention score (feature coordinates . latent features) on a pixel of
#: exactly its colour, in latent units: how sharply it claims its colour against the BOS sink.
NAME_STRENGTH = 6.0
#: Adam steps and learning rate of the fit of each word's embedding row.
NAME_FIT_STEPS = 400
NAME_FIT_LR = 0.05


def settings() -> dict:
    """Every constant of the names calibration: part of the tiny model's cache key."""
    return {name: value for name, value in globals().items() if name.isupper()}


@torch.no_grad()
def colour_targets(vae: nn.Module) -> torch.Tensor:
    """(C, F) the feature coordinates each colour word's text state should have.

    The calibrated VAE's latent (posterior mean, times the scaling factor) of a flat 64x64 patch of
    each colour of :data:`COLOUR_NAMES` has a luminance, two chroma and a texture coordinate. A
    word's target is its colour's chroma ``c`` scaled to ``NAME_STRENGTH * c / |c|^2``, so its
    score on a pixel of its own colour is :data:`NAME_STRENGTH` for every colour, and less on
    other hues (by the cosine and the chroma ratio); luminance (which the text encoder's states
    cannot express) and texture (the same for every flat colour) get 0.
    """
    rgb = torch.tensor(list(COLOUR_NAMES.values()), dtype=torch.float32) / 127.5 - 1.0
    patches = rgb[:, :, None, None].expand(-1, -1, 64, 64)
    latents = vae.encode(patches).latent_dist.mean.mean(dim=(-2, -1)) * vae.config.scaling_factor
    chroma = torch.zeros_like(latents)
    chroma[:, 1:3] = latents[:, 1:3]
    return NAME_STRENGTH * chroma / (chroma**2).sum(1, keepdim=True)


def add_colour_names(tokenizer, text_encoder: nn.Module, vae: nn.Module, sink: torch.Tensor,
                     features: torch.Tensor) -> None:
    """Add the colour words to ``tokenizer`` and fit their embedding rows (in place).

    Args:
        tokenizer: the tiny ``CLIPTokenizer``.
        text_encoder: the tiny ``CLIPTextModel``; existing weights are not changed.
        vae: the calibrated VAE (gives each colour's latent direction).
        sink: (D,) the cross-attention sink direction; features: (F, D) the feature directions
            (:func:`labeler.models.tiny.calibration.text_key_directions`).
    """
    from transformers import AddedToken

    words = list(COLOUR_NAMES)
    tokenizer.add_tokens([AddedToken(word, single_word=True, normalized=True) for word in words])
    old_rows = text_encoder.get_input_embeddings().weight.shape[0]
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    ids = torch.tensor(tokenizer(words, padding="max_length", max_length=77).input_ids)
    new = ids[:, 1]
    if not bool((new >= old_rows).all()):
        raise RuntimeError("a colour word did not become one added token")
    targets = colour_targets(vae)  # (C, F)
    empty = torch.tensor(tokenizer([""], padding="max_length", max_length=77).input_ids)
    with torch.no_grad():
        sink_level = float((text_encoder(empty)[0][0, 1:] @ sink).mean())
    _fit_rows(text_encoder, ids, new, targets, sink, features, sink_level)


def _fit_rows(text_encoder: nn.Module, ids: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor,
              sink: torch.Tensor, features: torch.Tensor, sink_level: float) -> None:
    """Fit the embedding rows ``rows`` (starting from the EOS row) so that the state at position 1
    of each prompt of ``ids`` has feature coordinates ``targets`` and sink coordinate
    ``sink_level``; every other weight is left exactly as it was."""
    weight = text_encoder.get_input_embeddings().weight
    flags = [(p, p.requires_grad) for p in text_encoder.parameters()]
    for parameter, _ in flags:
        parameter.requires_grad_(False)
    keep = weight.detach().clone()
    with torch.no_grad():
        weight[rows] = keep[ids[0, 2]]
    mask = torch.zeros(len(weight), 1)
    mask[rows] = 1.0
    weight.requires_grad_(True)
    hook = weight.register_hook(lambda grad: grad * mask)
    optimiser = torch.optim.Adam([weight], lr=NAME_FIT_LR)
    try:
        for _ in range(NAME_FIT_STEPS):
            states = text_encoder(ids)[0][:, 1]
            loss = ((states @ features.T - targets) ** 2).sum(1).mean()
            loss = loss + ((states @ sink - sink_level) ** 2).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    finally:
        hook.remove()
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
    with torch.no_grad():
        others = torch.ones(len(weight), dtype=torch.bool)
        others[rows] = False
        weight[others] = keep[others]
