"""KV fusion: the query's self-attention also reads the support's keys and values.

Every self-attention layer (``attn1``, 16 in SD) gets a :class:`KVFusionProcessor`, installed once;
cross-attention keeps its stock processor. The processors share one :class:`KVFusion` context whose
mode says what they do:

- ``off``: plain self-attention (stock behaviour).
- ``record``: plain self-attention, and the layer's projected K and V (after the head split) are
  stored in the context. The support pass runs in this mode, with its rows ordered class-major,
  shot-minor; the n shots of a class are flattened into one token sequence, so the bank of a
  layer is (G, heads, n * N, d) for G classes.
- ``read``: the query attends over ``[own K/V ; bank K/V]`` along the token axis, one softmax over
  both. A bank of G groups serves a query batch of ``G * m`` rows ordered image-major: row
  ``i * G + g`` reads group g. The bank is broadcast over the images (never split across them).

The support never reads the query, so a bank is a function of the support alone and can be
cached; the bank of n shots is the token-wise concatenation of n one-shot banks
(:meth:`SupportBank.concat_shots`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load as tensors_from_bytes
from safetensors.torch import save as tensors_to_bytes
from torch import Tensor

from labeler.attention.hooks import AttentionHooks
from labeler.attention.layers import select_layers, unet_attention_layers
from labeler.attention.processor import ProjectedAttention, ProjectingProcessor, sdpa_attention
from labeler.io.files import write_file
from labeler.io.reading import read_file
from labeler.io.uris import redact_uri
from labeler.models.safetensors_header import MalformedSafetensors, parse_header

Mode = Literal["off", "record", "read"]


@dataclass
class SupportBank:
    """Projected keys and values of the support pass, per self-attention layer.

    Attributes:
        keys, values: processor key -> (G, heads, M, d) in the compute dtype; G groups (classes),
            M = shots x tokens of the layer.
    """

    keys: dict[str, Tensor] = field(default_factory=dict)
    values: dict[str, Tensor] = field(default_factory=dict)

    @property
    def groups(self) -> int:
        """G, the number of banks side by side (classes)."""
        return next(iter(self.keys.values())).shape[0]

    def nbytes(self) -> int:
        """Memory held by the bank."""
        return sum(t.numel() * t.element_size() for t in [*self.keys.values(), *self.values.values()])

    def select(self, group: int) -> SupportBank:
        """The bank of one group, as a G = 1 bank (views, no copy)."""
        return SupportBank(
            {k: t[group : group + 1] for k, t in self.keys.items()},
            {k: t[group : group + 1] for k, t in self.values.items()},
        )

    def to(self, device: torch.device | str, dtype: torch.dtype) -> SupportBank:
        return SupportBank(
            {k: t.to(device, dtype) for k, t in self.keys.items()},
            {k: t.to(device, dtype) for k, t in self.values.items()},
        )

    @staticmethod
    def concat_shots(banks: Iterable[SupportBank]) -> SupportBank:
        """An n-shot bank from n banks of the same groups: concatenation along tokens."""
        return _concatenate(list(banks), dim=2)

    @staticmethod
    def stack_groups(banks: Iterable[SupportBank]) -> SupportBank:
        """A G-group bank from G banks with equal token counts (concatenation along groups)."""
        return _concatenate(list(banks), dim=0)

    def save(self, path: str | Path, metadata: dict[str, str] | None = None) -> None:
        """Write the bank to a safetensors file (tensors ``key/<layer>``, ``value/<layer>``),
        atomically through :mod:`labeler.io` (concurrent workers writing one bank are safe)."""
        tensors = {f"key/{k}": t.contiguous().cpu() for k, t in self.keys.items()}
        tensors.update({f"value/{k}": t.contiguous().cpu() for k, t in self.values.items()})
        write_file(str(path), tensors_to_bytes(tensors, metadata=metadata))

    @staticmethod
    def load(path: str | Path) -> SupportBank:
        """Read a bank written by :meth:`save`.

        Raises:
            MalformedSafetensors: the file is not a sound safetensors file (its header is
                checked before any tensor is read).
        """
        data = read_file(str(path))
        source = redact_uri(str(path))
        parse_header(data, len(data), source)
        try:
            tensors = tensors_from_bytes(data)
        except SafetensorError as error:
            raise MalformedSafetensors(f"{source}: unreadable tensor data ({error})") from None
        bank = SupportBank()
        for name, tensor in tensors.items():
            kind, _, layer = name.partition("/")
            (bank.keys if kind == "key" else bank.values)[layer] = tensor
        return bank


@dataclass
class KVFusion:
    """The mode and bank shared by all :class:`KVFusionProcessor` of one UNet.

    Attributes:
        mode: ``off``, ``record`` or ``read`` (see the module docstring).
        shots: in ``record`` mode, support rows per group (the n of n-shot).
        bank: what ``record`` fills and ``read`` uses.
        reads: processor keys that read the bank since the last :meth:`reset_reads` (tests and
            checks).
    """

    mode: Mode = "off"
    shots: int = 1
    bank: SupportBank = field(default_factory=SupportBank)
    reads: list[str] = field(default_factory=list)
    hooks: AttentionHooks | None = None

    def record(self, shots: int = 1) -> None:
        """Start a support pass whose rows are ``groups x shots`` (class-major)."""
        self._ensure_installed()
        self.mode, self.shots, self.bank = "record", shots, SupportBank()

    def read(self, bank: SupportBank) -> None:
        """Start query passes against ``bank``."""
        self._ensure_installed()
        self.mode, self.bank = "read", bank
        self.reads.clear()

    def off(self) -> None:
        self.mode, self.bank = "off", SupportBank()

    def reset_reads(self) -> None:
        self.reads.clear()

    def _ensure_installed(self) -> None:
        """Put the processors back if another hook set displaced them on this UNet."""
        if self.hooks is not None:
            self.hooks.ensure()


def _flatten_shots(tensor: Tensor, shots: int) -> Tensor:
    """(G * shots, H, N, d) class-major rows -> (G, H, shots * N, d)."""
    rows, heads, tokens, width = tensor.shape
    if rows % shots:
        raise ValueError(f"support batch of {rows} rows is not a multiple of {shots} shots")
    grouped = tensor.view(rows // shots, shots, heads, tokens, width)
    return grouped.transpose(1, 2).reshape(rows // shots, heads, shots * tokens, width)


def _with_bank(own: Tensor, bank: Tensor) -> Tensor:
    """[own ; bank] along tokens: own (G * m, H, N, d) rows image-major, bank (G, H, M, d)."""
    rows, heads, tokens, width = own.shape
    groups = bank.shape[0]
    if rows % groups:
        raise ValueError(f"query batch of {rows} rows is not a multiple of the bank's {groups} groups")
    images = rows // groups
    own = own.view(images, groups, heads, tokens, width)
    bank = bank.to(own.dtype).unsqueeze(0).expand(images, -1, -1, -1, -1)
    return torch.cat([own, bank], dim=3).view(rows, heads, tokens + bank.shape[3], width)


class KVFusionProcessor(ProjectingProcessor):
    """Self-attention with a support K/V bank (see :class:`KVFusion` for the modes).

    Args:
        key: the layer's processor key (the bank's key).
        fusion: the shared context.
    """

    def __init__(self, key: str, fusion: KVFusion) -> None:
        super().__init__(key)
        self.fusion = fusion

    def attend(self, attn, projected: ProjectedAttention) -> Tensor:
        fusion = self.fusion
        if fusion.mode == "record":
            fusion.bank.keys[self.key] = _flatten_shots(projected.key, fusion.shots)
            fusion.bank.values[self.key] = _flatten_shots(projected.value, fusion.shots)
        elif fusion.mode == "read":
            if projected.mask is not None:
                raise ValueError("attention masks are not supported with KV fusion")
            projected = replace(
                projected,
                key=_with_bank(projected.key, fusion.bank.keys[self.key]),
                value=_with_bank(projected.value, fusion.bank.values[self.key]),
            )
            fusion.reads.append(self.key)
        return sdpa_attention(attn, projected)


def self_attention_keys(unet) -> list[str]:
    """Processor keys of every self-attention (``attn1``) layer of ``unet``."""
    return [layer.key for layer in select_layers(unet_attention_layers(unet), "self")]


def install_kv_fusion(unet) -> KVFusion:
    """Install :class:`KVFusionProcessor` on every ``attn1`` layer, once; others keep theirs.

    Returns:
        the shared context (mode ``off``); ``fusion.hooks`` re-installs or restores them.
    """
    fusion = KVFusion()
    fusion.hooks = AttentionHooks(unet, {key: KVFusionProcessor(key, fusion) for key in self_attention_keys(unet)})
    return fusion


def _concatenate(banks: list[SupportBank], dim: int) -> SupportBank:
    """Banks of the same layers joined along ``dim`` (0: groups, 2: tokens) of every K and V."""
    return SupportBank(
        {k: torch.cat([b.keys[k] for b in banks], dim=dim) for k in banks[0].keys},
        {k: torch.cat([b.values[k] for b in banks], dim=dim) for k in banks[0].values},
    )
