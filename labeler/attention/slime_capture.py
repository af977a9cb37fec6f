"""Attention processors for SLiMe: cross-attention class maps and fused WAS-attention.

SLiMe reads two things from one UNet pass:

* the **cross-attention maps** of the K class tokens (BOS = background, then the K-1 learned
  embeddings) in a few up-block layers (16x16 and 32x32 for SD). They are cheap (77 keys), so
  :class:`ClassMapProcessor` computes the scores explicitly in fp32 and keeps, per layer, the
  head mean of the K raw score columns (training) and of the K columns of the 77-token softmax
  (inference);
* the **WAS-attention** in the 64x64 self-attention layers: ``WAS_c(q) = sum_k P[q, k] r_c(k)``
  with P the row-stochastic self-attention and r_c the class maps. That is attention with the
  class maps as *values*, so :class:`WasProcessor` runs a second fused SDPA with values = r and
  never materialises the 4096x4096 probabilities. The per-head outputs are averaged over heads
  and layers, which by linearity equals the reference's product with the head- and
  layer-averaged P.

The cross-attention layers run before the 64x64 up-block layers, so by the time the first WAS
layer runs, every class map is in the :class:`SlimeAttentionStore` and the values are built once
per forward. During training the processors keep the autograd graph; nothing is detached.

Usage::

    store = SlimeAttentionStore(cross_keys, self_keys, num_classes=K, class_values=values_fn)
    with slime_attention(unet, store):
        unet(latents, t, encoder_hidden_states=context)
    logits = store.cross_logits(64)   # (B, K, 64, 64)
    was = store.was()                 # (B, K, 64, 64)
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F

from labeler.attention.capture import project_attention_inputs, project_attention_output

#: Builds the WAS values from the layer-averaged cross maps:
#: ``(logits (B, K, h, w), probabilities (B, K, h, w)) -> values (B, K, h, w)`` at the self-attention
#: grid (h, w).
ClassValues = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

WasImpl = Literal["fused", "explicit"]


def fused_was(
    query: torch.Tensor, key: torch.Tensor, values: torch.Tensor, scale: float
) -> torch.Tensor:
    """WAS-attention per head as a fused SDPA: ``softmax(Q K^T * scale) @ values``.

    The values are zero-padded (or chunked) to the head dimension so the fused kernels (flash on
    CPU, flash/memory-efficient on GPU) accept them; the N x N probabilities are never stored.
    Computed in fp32.

    Args:
        query, key: (B, H, N, d).
        values: (B, N, K) class maps, shared by every head.

    Returns:
        (B, H, N, K) float32.
    """
    batch, heads, length, dim = query.shape
    classes = values.shape[-1]
    query, key = query.float(), key.float()
    padded = math.ceil(classes / dim) * dim
    values = F.pad(values.float(), (0, padded - classes))
    outputs = []
    for start in range(0, padded, dim):
        chunk = values[..., start : start + dim].unsqueeze(1).expand(batch, heads, length, dim)
        outputs.append(F.scaled_dot_product_attention(query, key, chunk, scale=scale))
    return torch.cat(outputs, dim=-1)[..., :classes]


def explicit_was(
    query: torch.Tensor, key: torch.Tensor, values: torch.Tensor, scale: float
) -> torch.Tensor:
    """The same WAS-attention with the (B, H, N, N) probabilities materialised (fp32 reference).

    Args:
        query, key: (B, H, N, d).
        values: (B, N, K).

    Returns:
        (B, H, N, K) float32.
    """
    probabilities = (query.float() @ key.float().transpose(-1, -2) * scale).softmax(dim=-1)
    return probabilities @ values.float().unsqueeze(1)


class SlimeAttentionStore:
    """What the SLiMe processors of one UNet forward share.

    Args:
        cross_keys: processor keys of the cross-attention layers that give the class maps.
        self_keys: processor keys of the self-attention layers that compute WAS.
        num_classes: K, the number of token columns read (BOS + K-1 class embeddings).
        class_values: builds the WAS values from the layer-averaged cross maps (None: no WAS, the
            self-attention layers then run as plain SDPA).
        was_impl: ``fused`` (SDPA with the class maps as values) or ``explicit`` (materialised
            probabilities; for tests and the benchmark).
    """

    def __init__(
        self,
        cross_keys: Sequence[str],
        self_keys: Sequence[str],
        num_classes: int,
        class_values: ClassValues | None = None,
        was_impl: WasImpl = "fused",
    ) -> None:
        if was_impl not in ("fused", "explicit"):
            raise ValueError(f"was_impl must be 'fused' or 'explicit', got {was_impl!r}")
        if not cross_keys:
            raise ValueError("SLiMe needs at least one cross-attention layer")
        self.cross_keys = list(cross_keys)
        self.self_keys = list(self_keys)
        self.num_classes = num_classes
        self.class_values = class_values
        self.was_impl = was_impl
        self.reset()

    def reset(self) -> None:
        """Forget the maps of the previous forward."""
        self._logits: dict[str, torch.Tensor] = {}
        self._probabilities: dict[str, torch.Tensor] = {}
        self._values: torch.Tensor | None = None
        self._was: dict[str, torch.Tensor] = {}

    # ---- filled by the processors -----------------------------------------------------------

    def add_cross(self, key: str, logits: torch.Tensor, probabilities: torch.Tensor) -> None:
        """Record one cross-attention layer: both (B, N, K) head means, float32."""
        self._logits[key] = logits
        self._probabilities[key] = probabilities

    def values_for(self, height: int, width: int) -> torch.Tensor:
        """The WAS values at a self-attention grid, built once per forward.

        Returns:
            (B, height*width, K) float32.
        """
        if self.class_values is None:
            raise RuntimeError("this store computes no WAS (class_values is None)")
        missing = [key for key in self.cross_keys if key not in self._logits]
        if missing:
            raise RuntimeError(
                f"WAS needs every class map before the self-attention layers run; {missing[0]} "
                "has not run yet (choose cross-attention layers that precede the WAS layers)"
            )
        if self._values is None or self._values.shape[1] != height * width:
            logits, probabilities = self.cross_maps((height, width))
            values = self.class_values(logits, probabilities)
            self._values = values.flatten(2).transpose(1, 2)
        return self._values

    def add_was(self, key: str, was: torch.Tensor) -> None:
        """Record one layer's head-mean WAS, (B, N, K) float32."""
        self._was[key] = was

    # ---- read after the forward ---------------------------------------------------------------

    def cross_maps(self, size: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer means of the class maps, each layer resized bilinearly to ``size`` first.

        Returns:
            logits (B, K, h, w): head/layer mean of the raw scores of the K tokens (training);
            probabilities (B, K, h, w): head/layer mean of the K columns of the 77-token softmax
            (inference).
        """
        size = (size, size) if isinstance(size, int) else tuple(size)
        if len(self._logits) != len(self.cross_keys):
            raise RuntimeError(f"{len(self._logits)} of {len(self.cross_keys)} class maps captured")
        return (
            _layer_mean([self._logits[key] for key in self.cross_keys], size),
            _layer_mean([self._probabilities[key] for key in self.cross_keys], size),
        )

    def cross_logits(self, size: int | tuple[int, int]) -> torch.Tensor:
        """(B, K, h, w) layer-mean raw scores (see :meth:`cross_maps`)."""
        return self.cross_maps(size)[0]

    def was(self, size: int | tuple[int, int] | None = None) -> torch.Tensor:
        """Layer mean of the head-mean WAS, optionally resized bilinearly (query grid).

        Returns:
            (B, K, h, w) float32; at the self-attention grid when ``size`` is None.
        """
        if len(self._was) != len(self.self_keys):
            raise RuntimeError(f"{len(self._was)} of {len(self.self_keys)} WAS layers captured")
        maps = [self._was[key] for key in self.self_keys]
        native = math.isqrt(maps[0].shape[1])
        mean = _layer_mean(maps, (native, native))
        if size is None:
            return mean
        size = (size, size) if isinstance(size, int) else tuple(size)
        return mean if mean.shape[-2:] == size else _resize(mean, size)


def _resize(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


def _layer_mean(maps: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Mean of per-layer (B, N_l, K) maps on square grids, each resized to ``size``."""
    total = None
    for layer_map in maps:
        side = math.isqrt(layer_map.shape[1])
        grid = layer_map.transpose(1, 2).reshape(layer_map.shape[0], layer_map.shape[2], side, side)
        if grid.shape[-2:] != size:
            grid = _resize(grid, size)
        total = grid if total is None else total + grid
    return total / len(maps)


class _SlimeProcessor(ABC):
    """Shared projection code of the two processors (input norm, Q/K/V, output projection)."""

    def __init__(self, key: str, store: SlimeAttentionStore) -> None:
        self.key = key
        self.store = store

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        projected = project_attention_inputs(
            attn, hidden_states, encoder_hidden_states, attention_mask, temb
        )
        grid = projected.grid
        if grid is None:
            side = math.isqrt(projected.query.shape[2])
            grid = (side, side)
        output = self.attend(
            attn, projected.query, projected.key, projected.value, projected.mask, grid
        )
        return project_attention_output(attn, output, projected)

    @abstractmethod
    def attend(self, attn, query, key, value, mask, grid) -> torch.Tensor:
        """(B, H, Nq, d) attention output of this processor's kind."""


class ClassMapProcessor(_SlimeProcessor):
    """Cross-attention with explicit fp32 scores; records the K class-token columns.

    Records per layer, head-averaged, (B, N, K): the raw scores (``Q K^T * scale``, the training
    logits) and the 77-token softmax probabilities (the inference maps).
    """

    def attend(self, attn, query, key, value, mask, grid) -> torch.Tensor:
        scores = query.float() @ key.float().transpose(-1, -2) * attn.scale
        if mask is not None:
            scores = scores + mask
        probabilities = scores.softmax(dim=-1)
        k = self.store.num_classes
        self.store.add_cross(
            self.key, scores[..., :k].mean(dim=1), probabilities[..., :k].mean(dim=1)
        )
        return (probabilities @ value.float()).to(query.dtype)


class WasProcessor(_SlimeProcessor):
    """Self-attention whose output is the usual fused SDPA, plus the layer's WAS-attention."""

    def attend(self, attn, query, key, value, mask, grid) -> torch.Tensor:
        output = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=attn.scale)
        if self.store.class_values is not None:
            if mask is not None:
                raise ValueError("WAS-attention does not support attention masks")
            values = self.store.values_for(*grid)
            was_fn = fused_was if self.store.was_impl == "fused" else explicit_was
            self.store.add_was(self.key, was_fn(query, key, values, attn.scale).mean(dim=1))
        return output


@contextmanager
def slime_attention(unet, store: SlimeAttentionStore) -> Iterator[SlimeAttentionStore]:
    """Install the SLiMe processors for one or more forwards; restore the originals on exit.

    The store is reset on entry; call ``store.reset()`` between forwards inside one block.
    """
    original = unet.attn_processors
    wanted = set(store.cross_keys) | set(store.self_keys)
    unknown = wanted - set(original)
    if unknown:
        raise ValueError(f"no such attention layers: {sorted(unknown)[:3]}")
    installed = {}
    for key, processor in original.items():
        if key in store.cross_keys:
            installed[key] = ClassMapProcessor(key, store)
        elif key in store.self_keys:
            installed[key] = WasProcessor(key, store)
        else:
            installed[key] = processor
    store.reset()
    unet.set_attn_processor(installed)
    try:
        yield store
    finally:
        unet.set_attn_processor(original)
