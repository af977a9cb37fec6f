"""The `tiny` model: a seeded, randomly initialised Stable Diffusion built from configs.

It uses the real diffusers/transformers classes (``UNet2DConditionModel``, ``AutoencoderKL``,
``CLIPTextModel``, ``CLIPTokenizer``, ``DDIMScheduler``) at tiny sizes, with the geometry of
SD 1.x: 512x512 images, a 64x64 latent, self-attention at 64, 32, 16 and 8 (5, 5, 5 and 1 layers),
cross-attention on 77 text tokens. It needs no download: it is built once from a fixed seed and
saved in diffusers layout under the cache folder, then loaded through the same code path as any
real checkpoint directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from labeler.models.tiny import calibration, names
from labeler.models.tiny.calibration import calibrate_unet, calibrate_vae, text_key_directions
from labeler.models.tiny.names import add_colour_names

logger = logging.getLogger(__name__)

TINY_SEED = 20240101
TINY_VERSION = 4
#: Prompts of 0..N-1 "part" words whose padding rows set the cross-attention key directions.
CALIBRATION_PROMPTS = 10
TEXT_WIDTH = 32
#: The key in ``model_index.json`` that marks a folder as the tiny model (its value: the version).
MARKER = "_labeler_tiny"

UNET_CONFIG = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": [32, 32, 64, 64],
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "cross_attention_dim": TEXT_WIDTH,
    "attention_head_dim": 2,
    "norm_num_groups": 8,
}
VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [8, 16, 16, 16],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 4,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
TEXT_CONFIG = {
    "hidden_size": TEXT_WIDTH,
    "intermediate_size": 64,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "max_position_embeddings": 77,
    "projection_dim": TEXT_WIDTH,
}
SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}


def _byte_alphabet() -> list[str]:
    """The 256 printable characters that byte-level BPE uses to spell every byte."""
    printable = list(range(ord("!"), ord("~") + 1))
    printable += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return [chr(code) for code in codes]


def tokenizer_vocabulary() -> tuple[dict[str, int], list[str]]:
    """A byte-level CLIP vocabulary: every byte alone and word-final, plus the two specials.

    No merges: any text tokenizes into one token per UTF-8 byte, which is all the tiny model needs.
    """
    alphabet = _byte_alphabet()
    tokens = alphabet + [char + "</w>" for char in alphabet] + ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}, []


def tiny_model_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the tiny model lives in diffusers layout; built on first use (atomically)."""
    root = Path(cache_dir or os.environ.get("LABELER_CACHE", Path.home() / ".cache" / "labeler"))
    target = root / "models" / f"tiny-sd-v{TINY_VERSION}-{_config_digest()}"
    if not (target / "model_index.json").exists():
        _build_into(target)
    return target


def is_tiny(model_dir: str | os.PathLike) -> bool:
    """Whether a diffusers folder is the calibrated tiny model (its model_index says so)."""
    index = Path(model_dir) / "model_index.json"
    return index.exists() and MARKER in json.loads(index.read_text())


def _config_digest() -> str:
    blob = json.dumps(
        [UNET_CONFIG, VAE_CONFIG, TEXT_CONFIG, SCHEDULER_CONFIG, TINY_SEED, torch.__version__,
         calibration.settings(), names.settings()],
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


@torch.no_grad()
def _text_directions(tokenizer, text_encoder) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Sink and feature directions of the text space, from prompts of 0..9 "part" words.

    Returns:
        sink (D,), features (F, D) (see :func:`text_key_directions`) and the BOS gap
        ``(bos - mean padding) . sink``.
    """
    prompts = [" ".join(["part"] * n) for n in range(CALIBRATION_PROMPTS)]
    ids = tokenizer(prompts, padding="max_length", max_length=77, return_tensors="pt").input_ids
    states = text_encoder(ids)[0]  # (P, 77, D); "part" is 4 byte tokens plus a space byte
    real = [len(tokenizer(p).input_ids) - 2 for p in prompts]
    pads = torch.cat([states[p, n + 1:] for p, n in enumerate(real)])
    sink, features = text_key_directions(states[0, 0], pads)
    gap = float((states[0, 0] - pads.mean(0)) @ sink)
    return sink, features, gap


@contextlib.contextmanager
def staged_folder(target: Path, marker: str) -> Iterator[Path]:
    """A staging folder beside ``target`` that becomes ``target`` when the block ends (one
    rename, so no reader sees half a model; a process that built ``target`` first, as its
    ``marker`` file shows, wins the race). The staging folder is removed whatever happens."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=target.parent))
    try:
        yield staging
        try:
            staging.rename(target)
        except OSError:
            if not (target / marker).exists():  # not another process winning the race
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _build_into(target: Path) -> None:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    logger.info("building the tiny model into %s", target)
    with staged_folder(target, "model_index.json") as staging:
        vocab, merges = tokenizer_vocabulary()
        tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
        text_config = CLIPTextConfig(
            vocab_size=len(vocab),
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
            **TEXT_CONFIG,
        )
        torch.manual_seed(TINY_SEED)
        unet = UNet2DConditionModel(**UNET_CONFIG)
        torch.manual_seed(TINY_SEED + 1)
        vae = AutoencoderKL(**VAE_CONFIG)
        torch.manual_seed(TINY_SEED + 2)
        text_encoder = CLIPTextModel(text_config).eval()
        calibrate_vae(vae)
        sink, features, gap = _text_directions(tokenizer, text_encoder)
        calibrate_unet(unet, sink, features, gap)
        add_colour_names(tokenizer, text_encoder, vae, sink, features)
        scheduler = DDIMScheduler(**SCHEDULER_CONFIG)

        unet.save_pretrained(staging / "unet")
        vae.save_pretrained(staging / "vae")
        text_encoder.save_pretrained(staging / "text_encoder")
        tokenizer.save_pretrained(staging / "tokenizer")
        scheduler.save_pretrained(staging / "scheduler")
        (staging / "model_index.json").write_text(
            json.dumps({"_class_name": "StableDiffusionPipeline", MARKER: TINY_VERSION})
        )
