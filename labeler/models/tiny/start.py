"""Where fine-tuning starts on the calibrated `tiny` model (docs/tiny-model.md).

The tiny UNet carries the latent unchanged through every block: each residual branch is zeroed,
including every transformer's ``proj_out`` and every self-attention's ``to_out``. On the bank
path (support K/V -> ``attn1`` -> ``to_out`` -> ``proj_out`` -> residual stream) two zero
matrices follow each other, so the gradient of either is zero and Adam never moves them: the
query's output cannot learn to depend on the support (DiffewS). A trained SD has no such zeros. The start
fills exactly those two weights per transformer with small seeded noise at the scale of what they
read and write (tokens of unit order in, the residual stream at ``HIDDEN_SCALE`` out), so the
first step already has a gradient on the bank path and the calibrated features still dominate.
"""

from __future__ import annotations

import torch

from labeler.models.tiny.calibration import HIDDEN_SCALE

#: Std of the noise in ``attn1.to_out`` (tokens in, tokens out) and ``proj_out`` (relative to
#: the hidden scale: tokens in, residual stream out).
OUT_STD = 0.05
PROJ_STD = 0.1
SEED = 7
#: The learning rate when fine-tuning from tiny: its attention and output layers are of unit order
#: and start from zero or near zero, so a reference lr of 1e-5 moves them ~100x too slowly for a
#: run of a few hundred steps.
TINY_LR = 1e-3


@torch.no_grad()
def tiny_start(unet) -> None:
    """Seeded noise in each transformer's ``attn1.to_out`` and ``proj_out`` (in place)."""
    generator = torch.Generator().manual_seed(SEED)
    for module in unet.modules():
        if type(module).__name__ != "Transformer2DModel":
            continue
        for block in module.transformer_blocks:
            weight = block.attn1.to_out[0].weight
            weight.copy_(OUT_STD * torch.randn(weight.shape, generator=generator))
        weight = module.proj_out.weight
        fan_in = weight[0].numel()
        weight.copy_(PROJ_STD * HIDDEN_SCALE / fan_in**0.5 * torch.randn(weight.shape, generator=generator))
