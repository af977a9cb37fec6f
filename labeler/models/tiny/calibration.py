"""Deterministic weights that give the `tiny` model the statistics SD's methods rely on.

A randomly initialised SD has none of the properties DiffSeg and SLiMe use: its VAE posterior is
mostly noise at a latent scale ~20x below SD's, its self-attention is nearly uniform, its
cross-attention scores are ~0.06 and its BOS token is no attention sink. This module sets the
weights of the real diffusers classes (no new layers) so that:

* **VAE encoder**: the posterior mean is a local 8x8 average of colour (three opponent axes) and
  of texture energy (local luminance gradient magnitude), scaled so that the latents times the
  scaling factor 0.18215 have roughly unit standard deviation on natural-looking images, as SD's
  do (the factor was chosen in the latent diffusion paper to whiten SD's latents). The posterior
  is near-deterministic (std :data:`POSTERIOR_STD` after scaling, ~1% of the latent spread), as a
  KL-regularised autoencoder trained with a tiny KL weight is.
* **VAE decoder**: the inverse of the encoder's colour part: each latent cell decodes to its
  8x8 block of RGB (the texture channel is not decoded), so a white-on-black mask image
  round-trips to the mask (DiffewS reads its masks from decoded images).
* **UNet residual stream**: every ResNet and transformer residual branch is zeroed, so the latent
  features travel unchanged through all resolutions (2x2 averages on the way down, the skip
  connection's copy on the way up). The output noise prediction is therefore independent of the
  text; only the attention maps carry information.
* **Self-attention** (all 16 layers): queries and keys are the same normalised colour/texture
  token, so the score is a similarity kernel and pixels of one region attend to each other, with
  the sharpness :data:`SELF_ATTENTION_SCALE` per resolution.
* **Cross-attention**: queries are the same token; keys project the text embedding onto a
  "constant" direction (the BOS token's: an attention sink every pixel looks at) and onto four
  feature directions chosen orthogonal to what the padding tokens vary in, so a learned token can
  claim the pixels of one colour/texture and the padding tokens stay quiet.

The hidden features are kept at ~1e-4 so every GroupNorm on the way works in its epsilon-dominated
(linear) regime instead of renormalising each image; feature pairs ``(x, -x)`` share a group so
the group mean is exactly zero. Tensor shapes are given per function.
"""

from __future__ import annotations

import torch
from torch import nn

from labeler.attention.layers import unet_attention_layers

#: Scale of the features inside VAE encoder and UNet: far below sqrt(GroupNorm eps = 1e-6).
HIDDEN_SCALE = 1e-4
#: Colour axes (rows) applied to RGB in [-1, 1]: luminance and two opponent axes, orthonormal.
COLOUR_AXES = (
    (3**-0.5, 3**-0.5, 3**-0.5),
    (2**-0.5, -(2**-0.5), 0.0),
    (6**-0.5, 6**-0.5, -2 * 6**-0.5),
)
#: Gain of the colour axes in scaled-latent units (unit std for typical photos).
COLOUR_GAIN = 2.0
#: Gain and offset of the texture channel (mean absolute luminance gradient per 8x8 cell).
TEXTURE_GAIN = 20.0
TEXTURE_OFFSET = 0.03
#: Posterior standard deviation after the scaling factor.
POSTERIOR_STD = 0.01
#: Self-attention score at cosine 1 between normalised tokens, per latent resolution.
SELF_ATTENTION_SCALE = {64: 36.0, 32: 36.0, 16: 36.0, 8: 36.0}
#: Size of the constant channel relative to the features (sets the kernel's colour bandwidth).
CONSTANT = 3.0
#: Cross-attention: score scale of the feature directions and of the BOS sink.
CROSS_FEATURE_SCALE = 5.0
CROSS_SINK_SCALE = 8.0
N_FEATURES = 4


def _zero(module: nn.Module) -> None:
    for param in module.parameters():
        param.zero_()


def _identity_conv(conv: nn.Conv2d, channels: int, gain: float = 1.0, taps=None) -> None:
    """Set a conv to copy its first ``channels`` inputs (gain), averaging the given kernel taps."""
    conv.weight.zero_()
    if conv.bias is not None:
        conv.bias.zero_()
    kh, kw = conv.weight.shape[2:]
    taps = taps or [(kh // 2, kw // 2)]
    for c in range(channels):
        for y, x in taps:
            conv.weight[c, c, y, x] = gain / len(taps)


def _identity_resnet(resnet: nn.Module, channels: int, skip_offset: int = 0) -> None:
    """A ResnetBlock2D that returns its input's first ``channels`` channels (residual zeroed).

    ``skip_offset`` picks which input channels the shortcut copies (the skip half in up blocks).
    """
    _zero(resnet.conv2)
    shortcut = getattr(resnet, "conv_shortcut", None)
    if shortcut is not None:
        shortcut.weight.zero_()
        shortcut.bias.zero_()
        for c in range(channels):
            shortcut.weight[c, skip_offset + c, 0, 0] = 1.0


def _pairs(features: torch.Tensor) -> torch.Tensor:
    """(F, ...) -> (2F, ...): interleaved ``(f, -f)`` so every GroupNorm group has zero mean."""
    return torch.stack([features, -features], 1).flatten(0, 1)


@torch.no_grad()
def calibrate_vae(vae: nn.Module) -> None:
    """VAE encoder -> posterior mean: 8x8 averages of colour axes and texture energy; the
    decoder inverts the colour part (:func:`calibrate_vae_decoder`).

    Latent (B, 4, H/8, W/8), times ``scaling_factor``: ``COLOUR_GAIN * axes @ rgb`` (3 channels)
    and ``TEXTURE_GAIN * (mean |grad luminance| - TEXTURE_OFFSET)``.

    The VAE has 4 GroupNorm groups (2 channels per group at width 8, 4 at width 16). Where a
    feature must be normalised on its own (mean over the image subtracted), it travels as a
    duplicate ``(f, f)``, which has exactly the statistics of ``f`` alone; where the group mean
    must be exactly zero, as ``(f, -f)`` (repeated at width 16).
    """
    calibrate_vae_encoder(vae)
    calibrate_vae_decoder(vae)


@torch.no_grad()
def calibrate_vae_encoder(vae: nn.Module) -> None:
    """The encoder half of :func:`calibrate_vae` (see its docstring for the latent)."""
    enc = vae.encoder
    s = HIDDEN_SCALE
    # conv_in (8, 3, 3, 3): channels (R, R, G, G, B, B, 0, 0): each colour alone in its group.
    enc.conv_in.weight.zero_()
    enc.conv_in.bias.zero_()
    for c in range(3):
        enc.conv_in.weight[2 * c, c, 1, 1] = s
        enc.conv_in.weight[2 * c + 1, c, 1, 1] = s
    # Block 0's resnet computes texture energy into channels 6, 7 as (t, -t).
    texture = enc.down_blocks[0].resnets[0]
    for norm in (texture.norm1, texture.norm2):
        norm.weight.fill_(1.0)
        norm.bias.zero_()
    # norm1 (one colour per group) gives ~0.1 * (R - mean R), SiLU halves it: ~0.05 * R.
    # conv1: central differences of luminance, as (gx, gx, -gx, -gx, gy, gy, -gy, -gy).
    texture.conv1.weight.zero_()
    texture.conv1.bias.zero_()
    lum = torch.tensor([1 / 3] * 3)
    diff_x = {(1, 2): 0.5, (1, 0): -0.5}
    diff_y = {(2, 1): 0.5, (0, 1): -0.5}
    for out, taps in ((0, diff_x), (4, diff_y)):
        for c in range(3):
            for (y, x), w in taps.items():
                value = w * lum[c] * s * 20.0
                for copy in (0, 1):
                    texture.conv1.weight[out + copy, 2 * c, y, x] = value
                    texture.conv1.weight[out + 2 + copy, 2 * c, y, x] = -value
    # norm2 (one signed gradient per group): ~x*1000; its gain makes SiLU(x) + SiLU(-x) ~ |x|.
    gain = 40.0
    texture.norm2.weight.fill_(gain)
    # conv2: t = sum over the rectified channels (each twice), written to channels 6, 7.
    texture.conv2.weight.zero_()
    texture.conv2.bias.zero_()
    # norm2 gives 0.1 * gain * g = 4 g; SiLU(4g) + SiLU(-4g) = 4 g tanh(2 g) ~ 4 |g| for edges.
    unit = s / 8.0
    for src in range(8):
        texture.conv2.weight[6, src, 1, 1] = unit
        texture.conv2.weight[7, src, 1, 1] = -unit
    # Block 0's downsampler: 2x2 average, and (R, R, G, G, B, B) -> (R, -R, G, -G, B, -B).
    taps = [(0, 0), (0, 1), (1, 0), (1, 1)]
    down = enc.down_blocks[0].downsamplers[0].conv
    _identity_conv(down, 8, taps=taps)
    for c in range(3):
        down.weight[2 * c + 1] *= -1.0
    # Block 1's first resnet widens to 16 channels: each pair twice, (f, -f, f, -f).
    _identity_resnet(enc.down_blocks[1].resnets[0], 0)
    shortcut = enc.down_blocks[1].resnets[0].conv_shortcut
    for out in range(16):
        shortcut.weight[out, 2 * (out // 4) + out % 2, 0, 0] = 1.0
    # Everything else is an identity: 2x2 averages in the downsamplers.
    for i, block in enumerate(enc.down_blocks):
        for j, resnet in enumerate(block.resnets):
            if i > 1 or (i == 1 and j):
                _identity_resnet(resnet, 16)
        for down in (block.downsamplers or []) if i else []:
            _identity_conv(down.conv, 16, taps=taps)
    for resnet in enc.mid_block.resnets:
        _identity_resnet(resnet, 16)
    for attention in enc.mid_block.attentions:
        _zero(attention.to_out[0])
    # conv_norm_out (16 ch, groups of 4 = (f, -f, f, -f)): linear x * 1000, shifted into
    # SiLU's linear range.
    shift = 20.0
    enc.conv_norm_out.weight.fill_(1.0)
    enc.conv_norm_out.bias.fill_(shift)
    # conv_out (8, 16, 3, 3): mean = axes @ rgb (3 ch) and texture; log-variance constant.
    enc.conv_out.weight.zero_()
    enc.conv_out.bias.zero_()
    factor = vae.config.scaling_factor
    norm_gain = s / 1e-3  # pixels of value v arrive as v * 0.1
    axes = torch.tensor(COLOUR_AXES)
    signs = (1.0, -1.0, 1.0, -1.0)
    for k in range(3):
        for c in range(3):
            w = COLOUR_GAIN * axes[k, c] / (factor * norm_gain)
            for j, sign in enumerate(signs):
                enc.conv_out.weight[k, 4 * c + j, 1, 1] = sign * w / 4
        # The shift cancels: the paired channels carry +shift.
    # texture channel: t arrives at ~0.1 * mean|grad| (channels 12-15).
    w = TEXTURE_GAIN / (factor * norm_gain)
    for j, sign in enumerate(signs):
        enc.conv_out.weight[3, 12 + j, 1, 1] = sign * w / 4
    enc.conv_out.bias[3] = -TEXTURE_GAIN * TEXTURE_OFFSET / factor
    # quant_conv (8, 8, 1, 1): identity on the mean, constant log-variance.
    quant = vae.quant_conv
    quant.weight.zero_()
    quant.bias.zero_()
    for k in range(4):
        quant.weight[k, k, 0, 0] = 1.0
    quant.bias[4:] = 2.0 * torch.log(torch.tensor(POSTERIOR_STD / factor))


@torch.no_grad()
def calibrate_vae_decoder(vae: nn.Module) -> None:
    """VAE decoder: the colour axes of each latent cell back to RGB, as an 8x8 block.

    The encoder's colour latent is ``COLOUR_GAIN * axes @ mean_8x8(rgb)`` with orthonormal axes,
    so ``rgb = axes.T @ latent / COLOUR_GAIN`` (the texture channel is not decoded). conv_in
    writes the RGB pairs ``(R, -R, G, -G, B, -B)`` at :data:`HIDDEN_SCALE`, every residual
    branch is zeroed, the upsamplers copy (nearest), and conv_norm_out (groups ``(f, -f)``, zero
    mean, linear regime) feeds SiLU, where ``silu(x) - silu(-x) = x`` exactly undoes the
    nonlinearity. Input (B, 4, h, w) unscaled latents -> (B, 3, 8h, 8w) RGB in [-1, 1] for the
    latents of images.
    """
    dec = vae.decoder
    s = HIDDEN_SCALE
    factor = vae.config.scaling_factor
    post = vae.post_quant_conv
    post.weight.zero_()
    post.bias.zero_()
    for k in range(4):
        post.weight[k, k, 0, 0] = 1.0
    dec.conv_in.weight.zero_()
    dec.conv_in.bias.zero_()
    axes = torch.tensor(COLOUR_AXES)
    for c in range(3):
        for k in range(3):
            w = s * axes[k, c] * factor / COLOUR_GAIN
            dec.conv_in.weight[2 * c, k, 1, 1] = w
            dec.conv_in.weight[2 * c + 1, k, 1, 1] = -w
    for resnet in dec.mid_block.resnets:
        _identity_resnet(resnet, 6)
    for attention in dec.mid_block.attentions:
        _zero(attention.to_out[0])
    for block in dec.up_blocks:
        for resnet in block.resnets:
            _identity_resnet(resnet, 6)
        for up in block.upsamplers or []:
            _identity_conv(up.conv, 6)
    # conv_norm_out: pixel value v arrives as v * s; the norm divides by ~sqrt(eps) = 1e-3.
    gain = 10.0
    dec.conv_norm_out.weight.fill_(gain)
    dec.conv_norm_out.bias.zero_()
    dec.conv_out.weight.zero_()
    dec.conv_out.bias.zero_()
    unit = 1e-3 / (gain * s)
    for c in range(3):
        dec.conv_out.weight[c, 2 * c, 1, 1] = unit
        dec.conv_out.weight[c, 2 * c + 1, 1, 1] = -unit


def _up_hidden_channels(config, block: int, index: int) -> int:
    """Channels of the upsampled path entering up block ``block``'s resnet ``index``."""
    widths = list(reversed(config.block_out_channels))
    return (widths[max(block - 1, 0)] if index == 0 else widths[block])


def _feature_token(transformer: nn.Module) -> None:
    """Transformer2DModel input: GroupNorm (linear) then proj_in to ``(c, -c, f0, -f0, ...)``.

    The residual features arrive as ``0.1 * f`` (latent units); the token is (C,) per pixel with
    the constant :data:`CONSTANT` in channels 0, 1 and the paired features in channels 2..9.
    """
    transformer.norm.weight.fill_(1.0)
    transformer.norm.bias.zero_()
    proj = transformer.proj_in
    proj.weight.zero_()
    proj.bias.zero_()
    proj.bias[0] = CONSTANT
    proj.bias[1] = -CONSTANT
    for k in range(2 * N_FEATURES):
        proj.weight[2 + k, k, ...] = 1.0 / (HIDDEN_SCALE / 1e-3)
    _zero(transformer.proj_out)


def _token_query(linear: nn.Linear, heads: int, gain: float) -> None:
    """Copy the token's 2 + 2F informative channels into every head, times ``gain``."""
    linear.weight.zero_()
    head_dim = linear.weight.shape[0] // heads
    for h in range(heads):
        for m in range(2 + 2 * N_FEATURES):
            linear.weight[h * head_dim + m, m] = gain


def settings() -> dict:
    """Every calibration constant: part of the tiny model's cache key."""
    return {name: value for name, value in globals().items() if name.isupper()}


def text_key_directions(bos: torch.Tensor, pads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The BOS sink direction and ``N_FEATURES`` directions the padding tokens barely span.

    Args:
        bos: (D,) text-encoder output at position 0 (the same for every prompt).
        pads: (N, D) outputs at EOS/padding positions of several prompts.

    Returns:
        sink (D,) unit vector along ``bos - mean(pads)``; features (F, D) orthonormal rows,
        orthogonal to the sink, the padding mean and the padding's main variation.
    """
    pad_mean = pads.mean(0)
    sink = bos - pad_mean
    sink = sink / sink.norm()
    basis = torch.linalg.qr(torch.stack([sink, pad_mean], 1)).Q  # (D, 2)
    centred = pads - pad_mean
    centred = centred - centred @ basis @ basis.T
    # Least-varying directions of the padding, inside the complement of sink and mean.
    _, _, vh = torch.linalg.svd(centred, full_matrices=True)
    candidates = vh.flip(0)
    candidates = candidates - candidates @ basis @ basis.T
    features = torch.linalg.qr(candidates[: N_FEATURES + 2].T).Q.T[:N_FEATURES]
    return sink, features


@torch.no_grad()
def calibrate_unet(unet: nn.Module, sink: torch.Tensor, features: torch.Tensor,
                   bos_gap: float) -> None:
    """Zero every residual branch, carry the features, build self- and cross-attention.

    Args:
        sink: (D,) text direction whose projection drives the attention sink.
        features: (F, D) text directions mapped onto the F latent features.
        bos_gap: ``(bos - mean padding) . sink`` in text units, to set the sink's logit gap.
    """
    config = unet.config
    width = 2 * N_FEATURES
    unet.conv_in.weight.zero_()
    unet.conv_in.bias.zero_()
    for k in range(N_FEATURES):
        unet.conv_in.weight[2 * k, k, 1, 1] = HIDDEN_SCALE
        unet.conv_in.weight[2 * k + 1, k, 1, 1] = -HIDDEN_SCALE
    for block in unet.down_blocks:
        for resnet in block.resnets:
            _identity_resnet(resnet, width)
        for down in block.downsamplers or []:
            _identity_conv(down.conv, width, taps=[(1, 1), (1, 2), (2, 1), (2, 2)])
    for resnet in unet.mid_block.resnets:
        _identity_resnet(resnet, width)
    for i, block in enumerate(unet.up_blocks):
        for j, resnet in enumerate(block.resnets):
            _identity_resnet(resnet, width, skip_offset=_up_hidden_channels(config, i, j))
        for up in block.upsamplers or []:
            _identity_conv(up.conv, width)
    for module in unet.modules():
        if type(module).__name__ == "Transformer2DModel":
            _feature_token(module)
    modules = dict(unet.named_modules())
    for layer in unet_attention_layers(unet):
        module = modules[layer.key.removesuffix(".processor")]
        heads = module.heads
        head_dim = module.to_q.weight.shape[0] // heads
        channels = module.to_q.weight.shape[1]
        _zero(module.to_out[0])
        if layer.kind == "self":
            gain = (SELF_ATTENTION_SCALE[layer.side] * head_dim**0.5 / channels) ** 0.5
            _token_query(module.to_q, heads, gain)
            _token_query(module.to_k, heads, gain)
            continue
        # logit = (c * sink_gain * (sink . e) + scale * f . (features @ e)) / |(c, f)|
        gain = (head_dim**0.5 / (2 * channels) ** 0.5) ** 0.5
        _token_query(module.to_q, heads, gain)
        key = module.to_k.weight
        key.zero_()
        sink_gain = CROSS_SINK_SCALE / bos_gap
        for h in range(heads):
            key[h * head_dim] = gain * sink_gain * sink
            key[h * head_dim + 1] = -gain * sink_gain * sink
            for k in range(N_FEATURES):
                key[h * head_dim + 2 + 2 * k] = gain * CROSS_FEATURE_SCALE * features[k]
                key[h * head_dim + 3 + 2 * k] = -gain * CROSS_FEATURE_SCALE * features[k]
    for name, module in unet.named_modules():
        if name.endswith("ff"):
            _zero(module.net[-1])

