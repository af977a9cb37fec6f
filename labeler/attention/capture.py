"""DiffSeg's attention capture: explicit, head-averaged probabilities handed to a sink.

Only the layers a method asks for get a :class:`CapturingProcessor`, which computes the attention
probabilities explicitly (in fp32), averages them over heads, and hands them to a sink; every
other layer keeps its fused processor (SDPA). Outputs are computed from the same probabilities, so
a captured forward pass equals an uncaptured one within floating-point tolerance.

A segmenter installs the processors once and resets the sink per batch::

    sink = ResolutionMeanSink()
    hooks = AttentionHooks(unet, {layer.key: CapturingProcessor(layer.key, sink) for layer in layers})
    for batch in batches:
        sink.reset()
        unet(latents, t, encoder_hidden_states=context)
        maps = sink.means()  # {side: (B, N, N)}
    hooks.restore()

:func:`capture_attention` does the same for one block of code.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch

from labeler.attention.hooks import AttentionHooks
from labeler.attention.processor import (
    ProjectedAttention,
    ProjectingProcessor,
    attention_with_probabilities,
    sdpa_attention,
)

#: A sink receives ``(layer_key, probabilities)`` with probabilities (B, N_query, N_key) float32,
#: head-averaged, rows summing to 1.
AttentionSink = Callable[[str, torch.Tensor], None]


@dataclass
class RowSelection:
    """Which batch rows a set of capturing processors captures, set before each forward pass.

    Attributes:
        rows: a contiguous ``slice(start, stop)`` of the batch, or None for every row. The other
            rows attend with the fused kernel (no probabilities kept).
    """

    rows: slice | None = None


class CapturingProcessor(ProjectingProcessor):
    """Attention with explicit, head-averaged probabilities handed to ``sink``.

    Args:
        key: the layer's processor key (passed to the sink).
        sink: receives the (B', N_query, N_key) fp32 head-mean probabilities of the selected rows.
        head_chunk: heads computed at once; bounds the (B, chunk, N, N) fp32 temporary.
        selection: the rows to capture (shared by the processors of one pass); None = all.
    """

    def __init__(self, key: str, sink: AttentionSink, head_chunk: int = 2,
                 selection: RowSelection | None = None) -> None:
        super().__init__(key)
        self.sink = sink
        self.head_chunk = head_chunk
        self.selection = selection

    def attend(self, attn, projected: ProjectedAttention) -> torch.Tensor:
        batch = projected.query.shape[0]
        rows = self.selection.rows if self.selection is not None else None
        start, stop, _ = (rows or slice(None)).indices(batch)
        if (start, stop) == (0, batch):
            return self._captured(attn, projected)
        parts = []
        if start > 0:
            parts.append(sdpa_attention(attn, _rows(projected, slice(0, start))).float())
        parts.append(self._captured(attn, _rows(projected, slice(start, stop))))
        if stop < batch:
            parts.append(sdpa_attention(attn, _rows(projected, slice(stop, batch))).float())
        return torch.cat(parts)

    def _captured(self, attn, projected: ProjectedAttention) -> torch.Tensor:
        output, head_mean = attention_with_probabilities(
            projected.query,
            projected.key,
            projected.value,
            scale=attn.scale,
            mask=projected.mask,
            head_chunk=self.head_chunk,
        )
        self.sink(self.key, head_mean)
        return output


def _rows(projected: ProjectedAttention, rows: slice) -> ProjectedAttention:
    """The projection of some batch rows (a mask of batch 1 is shared)."""
    mask = projected.mask
    if mask is not None and mask.shape[0] > 1:
        mask = mask[rows]
    return replace(projected, query=projected.query[rows], key=projected.key[rows],
                   value=projected.value[rows], mask=mask)


class ResolutionMeanSink:
    """Running mean of captured maps per query-grid side (the layer mean DiffSeg needs).

    Each map is (B, N, N) with N = side**2; :meth:`means` returns ``{side: (B, N, N)}``.
    """

    def __init__(self) -> None:
        self._sums: dict[int, torch.Tensor] = {}
        self._counts: dict[int, int] = {}

    def __call__(self, key: str, probabilities: torch.Tensor) -> None:
        side = math.isqrt(probabilities.shape[1])
        if side in self._sums:
            self._sums[side] += probabilities
            self._counts[side] += 1
        else:
            self._sums[side] = probabilities.clone()
            self._counts[side] = 1

    def reset(self) -> None:
        """Forget every map received so far (call at the start of each batch)."""
        self._sums.clear()
        self._counts.clear()

    def layer_counts(self) -> dict[int, int]:
        """How many layers were averaged per side."""
        return dict(self._counts)

    def means(self) -> dict[int, torch.Tensor]:
        """``{side: (B, side*side, side*side)}`` layer means, then clears the sink."""
        means = {side: total / self._counts[side] for side, total in self._sums.items()}
        self.reset()
        return means


def capturing_processors(
    sinks: Mapping[str, AttentionSink], head_chunk: int = 2, selection: RowSelection | None = None
) -> dict[str, CapturingProcessor]:
    """One :class:`CapturingProcessor` per processor key in ``sinks``, for :class:`AttentionHooks`."""
    return {key: CapturingProcessor(key, sink, head_chunk, selection) for key, sink in sinks.items()}


@contextmanager
def capture_attention(
    unet, sinks: Mapping[str, AttentionSink], head_chunk: int = 2
) -> Iterator[AttentionHooks]:
    """Install capturing processors on the layers named in ``sinks`` for one block; restore on exit.

    Args:
        unet: a diffusers ``UNet2DConditionModel``.
        sinks: processor key (see :func:`labeler.attention.layers.unet_attention_layers`) to sink.
    """
    hooks = AttentionHooks(unet, capturing_processors(sinks, head_chunk))
    try:
        yield hooks
    finally:
        hooks.restore()
