"""Attention capture through diffusers attention processors.

Only the layers a method asks for get a :class:`CapturingProcessor`, which computes the attention
probabilities explicitly (in fp32), averages them over heads, and hands them to a sink; every
other layer keeps its fused processor (SDPA). Outputs are computed from the same probabilities, so
a captured forward pass equals an uncaptured one within floating-point tolerance.

Usage::

    sink = ResolutionMeanSink()
    with capture_attention(unet, {layer.key: sink for layer in layers}):
        unet(latents, t, encoder_hidden_states=context)
    maps = sink.means()  # {side: (B, N, N)}
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch

#: A sink receives ``(layer_key, probabilities)`` with probabilities (B, N_query, N_key) float32,
#: head-averaged, rows summing to 1.
AttentionSink = Callable[[str, torch.Tensor], None]


class CapturingProcessor:
    """Attention with explicit, head-averaged probabilities handed to ``sink``.

    Args:
        key: the layer's processor key (passed to the sink).
        sink: receives the (B, N_query, N_key) fp32 head-mean probabilities.
        head_chunk: heads computed at once; bounds the (B, chunk, N, N) fp32 temporary.
    """

    def __init__(self, key: str, sink: AttentionSink, head_chunk: int = 2) -> None:
        self.key = key
        self.sink = sink
        self.head_chunk = head_chunk

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
        output, head_mean = attention_with_probabilities(
            projected.query,
            projected.key,
            projected.value,
            scale=attn.scale,
            mask=projected.mask,
            head_chunk=self.head_chunk,
        )
        self.sink(self.key, head_mean)
        return project_attention_output(attn, output, projected)


@dataclass
class ProjectedAttention:
    """An attention layer's inputs after normalisation and projection.

    Attributes:
        query: (B, H, Nq, d); key, value: (B, H, Nk, d).
        mask: additive mask broadcastable to (B, H, Nq, Nk), or None.
        residual: the layer input, for the residual connection.
        spatial_shape: (B, C, h, w) when the input was a feature map, else None.
        grid: (h, w) of the query grid when known from the input, else None.
    """

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    mask: torch.Tensor | None
    residual: torch.Tensor
    spatial_shape: tuple[int, int, int, int] | None
    grid: tuple[int, int] | None


def project_attention_inputs(
    attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None
) -> ProjectedAttention:
    """What every processor does before attending: norms, Q/K/V projection, head split."""
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    spatial_shape = grid = None
    if hidden_states.ndim == 4:
        batch, channels, height, width = hidden_states.shape
        spatial_shape, grid = (batch, channels, height, width), (height, width)
        hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
    if encoder_hidden_states is not None and attn.norm_cross:
        context = attn.norm_encoder_hidden_states(context)
    query = _split_heads(attn.to_q(hidden_states), attn.heads)
    key = _split_heads(attn.to_k(context), attn.heads)
    value = _split_heads(attn.to_v(context), attn.heads)
    if getattr(attn, "norm_q", None) is not None:
        query = attn.norm_q(query)
    if getattr(attn, "norm_k", None) is not None:
        key = attn.norm_k(key)
    mask = _additive_mask(attn, attention_mask, query, key)
    return ProjectedAttention(query, key, value, mask, residual, spatial_shape, grid)


def project_attention_output(
    attn, output: torch.Tensor, projected: ProjectedAttention
) -> torch.Tensor:
    """What every processor does after attending: merge heads, output projection, residual.

    Args:
        output: (B, H, Nq, d) attention output (any float dtype).
    """
    batch = output.shape[0]
    output = output.transpose(1, 2).reshape(batch, -1, attn.heads * projected.value.shape[-1])
    output = attn.to_out[1](attn.to_out[0](output.to(projected.query.dtype)))
    if projected.spatial_shape is not None:
        output = output.transpose(-1, -2).reshape(projected.spatial_shape)
    if attn.residual_connection:
        output = output + projected.residual
    return output / attn.rescale_output_factor


def attention_with_probabilities(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    scale: float,
    mask: torch.Tensor | None = None,
    head_chunk: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(Q K^T * scale) V with the probabilities kept, computed head-chunk by head-chunk.

    Args:
        query: (B, H, Nq, d); key, value: (B, H, Nk, d).
        mask: additive mask broadcastable to (B, H, Nq, Nk), or None.

    Returns:
        output (B, H, Nq, d) float32 and the head-mean probabilities (B, Nq, Nk) float32.
    """
    batch, heads, n_query, _ = query.shape
    head_sum = torch.zeros(batch, n_query, key.shape[2], device=query.device, dtype=torch.float32)
    outputs = []
    for start in range(0, heads, head_chunk):
        chunk = slice(start, start + head_chunk)
        scores = torch.matmul(query[:, chunk].float(), key[:, chunk].float().transpose(-1, -2))
        scores.mul_(scale)
        if mask is not None:
            scores = scores + (mask[:, chunk] if mask.shape[1] > 1 else mask)
        probabilities = scores.softmax(dim=-1)
        outputs.append(torch.matmul(probabilities, value[:, chunk].float()))
        head_sum += probabilities.sum(dim=1)
    return torch.cat(outputs, dim=1), head_sum / heads


def _split_heads(tensor: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, heads*d) -> (B, heads, N, d)."""
    batch, length, width = tensor.shape
    return tensor.view(batch, length, heads, width // heads).transpose(1, 2)


def _additive_mask(attn, attention_mask, query, key) -> torch.Tensor | None:
    if attention_mask is None:
        return None
    batch = query.shape[0]
    mask = attn.prepare_attention_mask(attention_mask, key.shape[2], batch)
    return mask.view(batch, -1, mask.shape[-2], mask.shape[-1]).float()


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

    def layer_counts(self) -> dict[int, int]:
        """How many layers were averaged per side."""
        return dict(self._counts)

    def means(self) -> dict[int, torch.Tensor]:
        """``{side: (B, side*side, side*side)}`` layer means, then clears the sink."""
        means = {side: total / self._counts[side] for side, total in self._sums.items()}
        self._sums.clear()
        self._counts.clear()
        return means


@contextmanager
def capture_attention(
    unet, sinks: Mapping[str, AttentionSink], head_chunk: int = 2
) -> Iterator[None]:
    """Install capturing processors on the layers named in ``sinks``; restore all on exit.

    Args:
        unet: a diffusers ``UNet2DConditionModel``.
        sinks: processor key (see :func:`labeler.attention.layers.unet_attention_layers`) to sink.
    """
    original = unet.attn_processors
    unknown = set(sinks) - set(original)
    if unknown:
        raise ValueError(f"no such attention layers: {sorted(unknown)[:3]}")
    installed = {
        key: CapturingProcessor(key, sinks[key], head_chunk) if key in sinks else processor
        for key, processor in original.items()
    }
    unet.set_attn_processor(installed)
    try:
        yield
    finally:
        unet.set_attn_processor(original)
