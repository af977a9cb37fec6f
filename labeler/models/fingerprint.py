"""A stable fingerprint of the parts of a model configuration that learned embeddings depend on."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

UNET_KEYS = (
    "sample_size",
    "in_channels",
    "block_out_channels",
    "down_block_types",
    "up_block_types",
    "layers_per_block",
    "cross_attention_dim",
    "attention_head_dim",
    "num_attention_heads",
)
TEXT_KEYS = ("hidden_size", "num_hidden_layers", "vocab_size", "max_position_embeddings")


def model_fingerprint(unet_config: Mapping, text_config: object) -> str:
    """16 hex chars identifying the UNet architecture and text-encoder shape.

    Only architecture keys enter the hash, so the same checkpoint loaded in another dtype or
    diffusers version keeps its fingerprint.
    """
    unet = {key: _plain(unet_config.get(key)) for key in UNET_KEYS}
    text = {key: _plain(getattr(text_config, key, None)) for key in TEXT_KEYS}
    blob = json.dumps({"unet": unet, "text": text}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _plain(value: object) -> object:
    return list(value) if isinstance(value, (tuple, list)) else value
