"""Stable Diffusion components loaded once per worker, and the operations methods share.

A :class:`Backbone` holds the UNet, VAE, text encoder, tokenizer and noise schedule of one
checkpoint on one device. Methods call :meth:`Backbone.encode_images` (pixels to latents),
:meth:`Backbone.encode_prompts` (text to conditioning) and run the UNet themselves.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

TINY = "tiny"
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


class ModelLoadError(RuntimeError):
    """A model could not be found, downloaded or is not a Stable Diffusion checkpoint."""


@dataclass
class Backbone:
    """The SD components of one checkpoint, frozen, in eval mode, on one device.

    Attributes:
        name: what the user asked for (``tiny``, a hub id, or a directory/URI).
        unet, vae, text_encoder, tokenizer, scheduler: the diffusers/transformers objects.
        device, dtype: where the UNet and VAE run and their weight dtype.
    """

    name: str
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler: object
    device: torch.device
    dtype: torch.dtype
    _prompt_cache: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def vae_scale(self) -> int:
        """Pixels per latent cell along one side (8 for SD)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def image_size(self) -> int:
        """The square input side the UNet was trained for (512 for SD 1.x/2.x-base)."""
        return self.vae_scale * int(self.unet.config.sample_size)

    @cached_property
    def fingerprint(self) -> str:
        """A short hash of the UNet and text-encoder configs: what embedding sets are tied to."""
        from labeler.models.fingerprint import model_fingerprint

        return model_fingerprint(self.unet.config, self.text_encoder.config)

    @torch.no_grad()
    def encode_images(
        self, pixels: torch.Tensor, generator: torch.Generator | None = None, sample: bool = False
    ) -> torch.Tensor:
        """VAE-encode images.

        Args:
            pixels: (B, 3, H, W) float in [-1, 1], RGB, any dtype/device.
            generator: RNG for ``sample=True``.
            sample: draw from the VAE posterior (SLiMe reference) instead of taking its mean
                (DiffSeg reference).

        Returns:
            (B, C_latent, H/8, W/8) latents scaled by the VAE scaling factor, in ``self.dtype``.
        """
        posterior = self.vae.encode(pixels.to(self.device, self.dtype)).latent_dist
        latents = posterior.sample(generator) if sample else posterior.mean
        return latents * self.vae.config.scaling_factor

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Text-encoder last hidden states, cached per prompt.

        Returns:
            (len(prompts), 77, D) in ``self.dtype`` on ``self.device``.
        """
        missing = [p for p in dict.fromkeys(prompts) if p not in self._prompt_cache]
        if missing:
            tokens = self.tokenizer(
                missing,
                padding="max_length",
                max_length=self.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(self.text_encoder.device)
            hidden = self.text_encoder(tokens)[0]
            for prompt, row in zip(missing, hidden):
                self._prompt_cache[prompt] = row.to(self.device, self.dtype)
        return torch.stack([self._prompt_cache[p] for p in prompts])


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """fp32 on CPU; bf16 on GPUs that support it, else fp16."""
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def load_backbone(
    name: str,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    storage_options: dict | None = None,
) -> Backbone:
    """Load the SD components of ``name`` once.

    Args:
        name: ``tiny``; a Hugging Face model id (``CompVis/stable-diffusion-v1-4``); a local
            directory in diffusers layout; or an fsspec URI of such a directory (``s3://...``),
            copied once into the local cache.
        device: defaults to CUDA when available.
        dtype: defaults to bf16/fp16 on GPU and fp32 on CPU (``"float16"`` etc. accepted).
        storage_options: fsspec options for remote model directories.

    Raises:
        ModelLoadError: the model is missing, unreachable or not an SD checkpoint.
    """
    device = torch.device(device) if device is not None else default_device()
    dtype = _resolve_dtype(dtype, device)
    source = _resolve_source(name, storage_options)
    parts = _load_components(source, dtype)
    _check_compatible(name, parts)
    for key in ("unet", "vae", "text_encoder"):
        module = parts[key]
        module.requires_grad_(False)
        module.eval()
    parts["unet"].to(device)  # already in `dtype`: loaded with torch_dtype
    parts["vae"].to(device)
    parts["text_encoder"].to(device)  # fp32 text encoder: tiny cost, exact prompts
    logger.info("loaded %s on %s (%s)", name, device, dtype)
    return Backbone(name=name, device=device, dtype=dtype, **parts)


def _resolve_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    if dtype is None or dtype == "auto":
        return default_dtype(device)
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype, None)
        if not isinstance(resolved, torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}: use float32, float16 or bfloat16")
        return resolved
    return dtype


def _resolve_source(name: str, storage_options: dict | None) -> str:
    """A local directory or hub id that ``from_pretrained`` can read."""
    if name == TINY:
        from labeler.models.tiny import tiny_model_dir

        return str(tiny_model_dir())
    if "://" in name and not name.startswith("file://"):
        return str(_mirror_remote_dir(name, storage_options or {}))
    local = Path(name.removeprefix("file://")).expanduser()
    if local.exists():
        if not (local / "unet").is_dir():
            raise ModelLoadError(
                f"{name} is not a diffusers model directory: it has no unet/ folder "
                f"(expected {', '.join(COMPONENTS)})"
            )
        return str(local)
    if name.startswith((".", "/", "~")):
        raise ModelLoadError(f"model directory {name} does not exist")
    return name


def _mirror_remote_dir(uri: str, storage_options: dict) -> Path:
    """Copy a diffusers directory from object storage into the local cache once."""
    import hashlib

    import fsspec

    from labeler.io.uris import redact_uri

    cache = Path(os.environ.get("LABELER_CACHE", Path.home() / ".cache" / "labeler"))
    target = cache / "models" / hashlib.sha256(uri.encode()).hexdigest()[:16]
    if (target / ".complete").exists():
        return target
    fs, root = fsspec.core.url_to_fs(uri, **storage_options)
    if not fs.exists(f"{root.rstrip('/')}/unet"):
        raise ModelLoadError(f"{redact_uri(uri)} is not a diffusers model directory (no unet/)")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".remote-", dir=target.parent))
    fs.get(root.rstrip("/") + "/", str(staging), recursive=True)
    (staging / ".complete").touch()
    try:
        staging.rename(target)
    except OSError:
        if not (target / ".complete").exists():
            raise
    return target


def _load_components(source: str, dtype: torch.dtype) -> dict:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from diffusers.utils import logging as diffusers_logging
    from transformers import CLIPTextModel, CLIPTokenizer
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()

    loaders = {
        "unet": UNet2DConditionModel.from_pretrained,
        "vae": AutoencoderKL.from_pretrained,
        "text_encoder": CLIPTextModel.from_pretrained,
        "tokenizer": CLIPTokenizer.from_pretrained,
        "scheduler": DDIMScheduler.from_pretrained,
    }
    options = {"unet": {"torch_dtype": dtype}, "vae": {"torch_dtype": dtype}}
    parts = {}
    for key, load in loaders.items():
        try:
            parts[key] = load(source, subfolder=key, **options.get(key, {}))
        except (OSError, ValueError, EnvironmentError) as error:
            raise ModelLoadError(
                f"could not load the {key} of model {source!r}: {error}. Pass `tiny`, a Hugging "
                "Face id reachable from this machine (or already in its cache), or a diffusers "
                "directory (local path or fsspec URI)."
            ) from error
    return parts


def _check_compatible(name: str, parts: dict) -> None:
    unet_config = parts["unet"].config
    width = parts["text_encoder"].config.hidden_size
    if unet_config.cross_attention_dim != width:
        raise ModelLoadError(
            f"model {name}: the UNet expects {unet_config.cross_attention_dim}-wide text "
            f"embeddings but the text encoder produces {width}: the components do not match"
        )
    if unet_config.in_channels != parts["vae"].config.latent_channels:
        raise ModelLoadError(
            f"model {name}: the UNet takes {unet_config.in_channels} latent channels but the VAE "
            f"produces {parts['vae'].config.latent_channels} (inpainting or other variants are "
            "not supported)"
        )
