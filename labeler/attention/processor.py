"""The base of every labeler attention processor: project Q/K/V, attend, project the output.

A diffusers ``Attention`` module owns the weights and hands the computation to its processor,
``processor(attn, hidden_states, encoder_hidden_states, attention_mask, temb)``. Every processor
labeler installs does the same work before and after attending (spatial norm, feature map to
tokens, group norm, cross-attention norm, Q/K/V projection and head split, optional Q/K norms;
then head merge, output projection and dropout, tokens back to a feature map, residual
connection, output rescale), so that work lives here once, in :class:`ProjectingProcessor`, and a
subclass only says how to attend (:meth:`ProjectingProcessor.attend`), using the two kernels
provided: :func:`sdpa_attention` (fused, probabilities never stored) and
:func:`attention_with_probabilities` (explicit fp32 softmax, head-mean probabilities kept).

Extending the base: a processor whose keys and values are not only the layer's own, for example
a K/V-fusion self-attention where the query image also attends to the keys and values of support
images cached in a bank, is a small subclass::

    class KVFusionProcessor(ProjectingProcessor):
        def __init__(self, key, bank):
            super().__init__(key)
            self.bank = bank                       # key -> (K (B, H, Ns, d), V (B, H, Ns, d))

        def attend(self, attn, projected):
            if self.key not in self.bank:          # support pass: store own K/V, attend normally
                self.bank[self.key] = (projected.key, projected.value)
                return sdpa_attention(attn, projected)
            bank_key, bank_value = self.bank[self.key]
            return sdpa_attention(attn, projected.extended(bank_key, bank_value))

Install such processors with :class:`labeler.attention.hooks.AttentionHooks` (once per segmenter).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F


@dataclass
class ProjectedAttention:
    """An attention layer's inputs after normalisation and projection.

    Attributes:
        query: (B, H, Nq, d); key, value: (B, H, Nk, d).
        mask: additive float32 mask broadcastable to (B, H, Nq, Nk), or None.
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

    def query_grid(self) -> tuple[int, int]:
        """(h, w) of the query tokens: from the input feature map, else assumed square."""
        if self.grid is not None:
            return self.grid
        side = math.isqrt(self.query.shape[2])
        if side * side != self.query.shape[2]:
            raise ValueError(f"{self.query.shape[2]} query tokens are not a square grid")
        return side, side

    def extended(self, key: torch.Tensor, value: torch.Tensor) -> ProjectedAttention:
        """The same projection with extra keys/values appended along the token axis.

        Args:
            key, value: (B, H, Ne, d) (a batch of 1 is broadcast to B).

        Raises:
            ValueError: the layer has an attention mask (it would not cover the extra keys).
        """
        if self.mask is not None:
            raise ValueError("cannot extend the keys of a masked attention layer")
        batch = self.key.shape[0]
        key, value = key.expand(batch, -1, -1, -1), value.expand(batch, -1, -1, -1)
        return replace(
            self,
            key=torch.cat([self.key, key.to(self.key.dtype)], dim=2),
            value=torch.cat([self.value, value.to(self.value.dtype)], dim=2),
        )


class ProjectingProcessor(ABC):
    """A diffusers attention processor that projects Q/K/V itself and delegates the attention.

    Subclasses implement :meth:`attend`; everything around it (norms, projections, residual,
    rescale) follows the diffusers ``Attention`` module exactly, so a subclass that attends like
    SDPA leaves the layer's output unchanged.

    Args:
        key: the layer's processor key (``...attn1.processor``), for sinks and banks.

    Attributes:
        replaces: the processor this one replaced (set by
            :class:`~labeler.attention.hooks.AttentionHooks`; what ``restore()`` puts back).
    """

    def __init__(self, key: str) -> None:
        self.key = key
        self.replaces = None

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
        return project_attention_output(attn, self.attend(attn, projected), projected)

    @abstractmethod
    def attend(self, attn, projected: ProjectedAttention) -> torch.Tensor:
        """The attention output, (B, H, Nq, d) in any float dtype."""


def sdpa_attention(attn, projected: ProjectedAttention) -> torch.Tensor:
    """Fused ``softmax(Q K^T * scale + mask) V`` in the model dtype, (B, H, Nq, d)."""
    mask = projected.mask
    if mask is not None:
        mask = mask.to(projected.query.dtype)
    return F.scaled_dot_product_attention(
        projected.query, projected.key, projected.value, attn_mask=mask, scale=attn.scale
    )


def project_attention_inputs(
    attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None
) -> ProjectedAttention:
    """What every processor does before attending: norms, Q/K/V projection, head split.

    Args:
        hidden_states: (B, N, C) tokens or a (B, C, h, w) feature map.
        encoder_hidden_states: (B, Nk, C') context for cross-attention, None for self-attention.
    """
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

    Returns:
        the layer output, shaped like the layer input.
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
        head_chunk: heads computed at once; bounds the (B, chunk, Nq, Nk) fp32 temporary.

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
    """The module's mask as an additive float32 (B, H or 1, Nq or 1, Nk) tensor, or None."""
    if attention_mask is None:
        return None
    batch = query.shape[0]
    mask = attn.prepare_attention_mask(attention_mask, key.shape[2], batch)
    return mask.view(batch, -1, mask.shape[-2], mask.shape[-1]).float()
