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

Usage (a segmenter installs the processors once, and resets the store before each forward)::

    store = SlimeAttentionStore(cross_keys, self_keys, num_classes=K, class_values=values_fn)
    hooks = AttentionHooks(unet, slime_processors(store))
    store.reset()
    unet(latents, t, encoder_hidden_states=context)
    logits = store.cross_logits(64)   # (B, K, 64, 64)
    was = store.was()                 # (B, K, 64, 64)
    with store.paused():              # a forward that records nothing (plain SDPA)
        unet(latents, t, encoder_hidden_states=other_context)
    hooks.restore()
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F

from labeler.attention.hooks import AttentionHooks
from labeler.attention.processor import ProjectedAttention, ProjectingProcessor, sdpa_attention

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
        self.recording = True
        self.reset()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Forwards inside this block record nothing (the processors run plain SDPA)."""
        self.recording = False
        try:
            yield
        finally:
            self.recording = True

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


class _SlimeProcessor(ProjectingProcessor):
    """A processor that records into a :class:`SlimeAttentionStore` (only while it records)."""

    def __init__(self, key: str, store: SlimeAttentionStore) -> None:
        super().__init__(key)
        self.store = store


class ClassMapProcessor(_SlimeProcessor):
    """Cross-attention with explicit fp32 scores; records the K class-token columns.

    Records per layer, head-averaged, (B, N, K): the raw scores (``Q K^T * scale``, the training
    logits) and the 77-token softmax probabilities (the inference maps). Plain SDPA while the
    store is paused.
    """

    def attend(self, attn, projected: ProjectedAttention) -> torch.Tensor:
        if not self.store.recording:
            return sdpa_attention(attn, projected)
        query, key, value, mask = projected.query, projected.key, projected.value, projected.mask
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

    def attend(self, attn, projected: ProjectedAttention) -> torch.Tensor:
        output = sdpa_attention(attn, projected)
        if self.store.recording and self.store.class_values is not None:
            if projected.mask is not None:
                raise ValueError("WAS-attention does not support attention masks")
            values = self.store.values_for(*projected.query_grid())
            was_fn = fused_was if self.store.was_impl == "fused" else explicit_was
            was = was_fn(projected.query, projected.key, values, attn.scale)
            self.store.add_was(self.key, was.mean(dim=1))
        return output


def slime_processors(store: SlimeAttentionStore) -> dict[str, _SlimeProcessor]:
    """The processors of a store's layers, for :class:`~labeler.attention.hooks.AttentionHooks`."""
    processors: dict[str, _SlimeProcessor] = {
        key: ClassMapProcessor(key, store) for key in store.cross_keys
    }
    processors.update({key: WasProcessor(key, store) for key in store.self_keys})
    return processors


@contextmanager
def slime_attention(unet, store: SlimeAttentionStore) -> Iterator[SlimeAttentionStore]:
    """Install the SLiMe processors for one block of code; restore the originals on exit.

    The store is reset on entry; call ``store.reset()`` between forwards inside one block.
    A segmenter installs :func:`slime_processors` once instead, with :class:`AttentionHooks`.
    """
    hooks = AttentionHooks(unet, slime_processors(store))
    store.reset()
    try:
        yield store
    finally:
        hooks.restore()
