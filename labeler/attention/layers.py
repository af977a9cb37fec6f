"""Naming the attention layers of a diffusers UNet by role and resolution.

Methods pick layers by what they are (self- or cross-attention, down/mid/up block, query-grid side
at the model's native size), never by hard-coded module names, so any SD 1.x/2.x UNet works:
in code with :func:`select_layers`, in settings and files with the selector strings of
:func:`resolve_layers` (``up/cross/16``, ``up/cross/32:2``, ``up/self/64``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from labeler.errors import UserError

_PROCESSOR_KEY = re.compile(
    r"^(down_blocks|mid_block|up_blocks)\.?(\d+)?\.(.+)\.(attn1|attn2)\.processor$"
)
_SELECTOR = re.compile(r"^(down|mid|up)/(self|cross)/(\d+)(?::(\d+))?$")
_POSITION = re.compile(r"attentions\.(\d+)\.transformer_blocks\.(\d+)\.")


@dataclass(frozen=True)
class AttentionLayer:
    """One ``Attention`` module of a UNet.

    Attributes:
        key: the processor key used by ``unet.set_attn_processor`` (``...attn1.processor``).
        kind: ``self`` (attn1) or ``cross`` (attn2, keys are text tokens).
        block: ``down``, ``mid`` or ``up``.
        block_index: index of the down/up block (0 for mid).
        side: query-grid side at the model's native input size (64, 32, 16, 8 for SD at 512).
    """

    key: str
    kind: Literal["self", "cross"]
    block: Literal["down", "mid", "up"]
    block_index: int
    side: int


def unet_attention_layers(unet) -> list[AttentionLayer]:
    """Every attention layer of ``unet`` in processor order, with role and resolution.

    Resolution follows the SD UNet layout: down block i works at ``sample_size / 2**i``, the mid
    block at the lowest resolution, up block j at ``sample_size / 2**(n-1-j)``.
    """
    config = unet.config
    levels = len(config.down_block_types)
    layers = []
    for key in unet.attn_processors:
        match = _PROCESSOR_KEY.match(key)
        if match is None:
            continue
        block_name, index, _, attn = match.groups()
        block = {"down_blocks": "down", "mid_block": "mid", "up_blocks": "up"}[block_name]
        index = int(index or 0)
        depth = {"down": index, "mid": levels - 1, "up": levels - 1 - index}[block]
        layers.append(
            AttentionLayer(
                key=key,
                kind="self" if attn == "attn1" else "cross",
                block=block,
                block_index=index,
                side=int(config.sample_size) // 2**depth,
            )
        )
    return layers


def select_layers(
    layers: list[AttentionLayer],
    kind: Literal["self", "cross"],
    sides: tuple[int, ...] | None = None,
    blocks: tuple[str, ...] | None = None,
) -> list[AttentionLayer]:
    """Filter layers by kind, native query side and block role."""
    return [
        layer
        for layer in layers
        if layer.kind == kind
        and (sides is None or layer.side in sides)
        and (blocks is None or layer.block in blocks)
    ]


def is_selector(text: object) -> bool:
    """Whether ``text`` is a well-formed layer selector (``block/kind/side[:n]``)."""
    return isinstance(text, str) and _SELECTOR.match(text) is not None


def resolve_layers(unet, selectors: Sequence[str]) -> list[str]:
    """Processor keys of the layers a list of selectors names, in execution order.

    A selector is ``block/kind/side`` (every such layer: ``block`` is down, mid or up, ``kind``
    self or cross, ``side`` the native query-grid side) or ``block/kind/side:n`` (only the first
    n attention modules of each matching block). Only the first transformer block of each
    attention module counts (SD 1.x/2.x have one). Overlapping selectors name a layer once.

    Raises:
        ValueError: a malformed selector, or one that matches no layer of this UNet.
    """
    layers = unet_attention_layers(unet)
    chosen: set[str] = set()
    for selector in selectors:
        match = _SELECTOR.match(selector)
        if match is None:
            raise UserError(
                f"bad layer selector {selector!r}: use block/kind/side[:n], e.g. up/cross/16"
            )
        block, kind, side, first = match.groups()
        limit = None if first is None else int(first)
        matched = [
            layer.key
            for layer in layers
            if (layer.block, layer.kind, layer.side) == (block, kind, int(side))
            and _within_first(layer.key, limit)
        ]
        if not matched:
            raise UserError(f"layer selector {selector!r} matches no attention layer of this UNet")
        chosen.update(matched)
    return [key for key in unet.attn_processors if key in chosen]


def _within_first(key: str, limit: int | None) -> bool:
    """Whether a layer is in the first transformer block of one of a block's first ``limit``
    attention modules (any attention module when ``limit`` is None)."""
    position = _POSITION.search(key)
    attention_index, transformer_index = (int(position[1]), int(position[2])) if position else (0, 0)
    return transformer_index == 0 and (limit is None or attention_index < limit)
