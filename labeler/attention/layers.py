"""Naming the attention layers of a diffusers UNet by role and resolution.

Methods pick layers by what they are (self- or cross-attention, down/mid/up block, query-grid side
at the model's native size), never by hard-coded module names, so any SD 1.x/2.x UNet works.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

_PROCESSOR_KEY = re.compile(
    r"^(down_blocks|mid_block|up_blocks)\.?(\d+)?\.(.+)\.(attn1|attn2)\.processor$"
)


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
