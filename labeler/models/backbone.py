"""Stable Diffusion components loaded once per worker, and the operations methods share.

A :class:`Backbone` holds the UNet, VAE, text encoder, tokenizer and noise schedule of one
checkpoint on one device. Methods call :meth:`Backbone.encode_images` (pixels to latents),
:meth:`Backbone.encode_prompts` (text to conditioning) and run the UNet themselves.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from diffusers.utils import logging as diffusers_logging
from transformers import CLIPTextModel, CLIPTokenizer
from transformers.utils import logging as transformers_logging

from labeler.errors import UserError
from labeler.io.files import folder_version, read_folder
from labeler.io.uris import open_fs, redact_uri
from labeler.models.fingerprint import model_fingerprint, weights_fingerprint
from labeler.models.locate import TINY, ModelLoadError, hub_snapshot
from labeler.models.safetensors_header import check_folder
from labeler.models.tiny.model import tiny_model_dir

logger = logging.getLogger(__name__)

DTYPE_NAMES = ("float32", "float16", "bfloat16")
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


@dataclass
class Backbone:
    """The SD components of one checkpoint, frozen, in eval mode, on one device.

    Attributes:
        name: what the user asked for (``tiny``, a hub id, or a directory/URI).
        unet, vae, text_encoder, tokenizer, scheduler: the diffusers/transformers objects.
        device, dtype: where the UNet and VAE run and their weight dtype.
        sources: per component, the local directory its files were loaded from (a component
            override, e.g. a fine-tuned UNet, names its own directory).
    """

    name: str
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler: object
    device: torch.device
    dtype: torch.dtype
    sources: dict[str, str] = field(default_factory=dict)
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
        return model_fingerprint(self.unet.config, self.text_encoder.config)

    @cached_property
    def weights_fingerprint(self) -> str:
        """A short hash of the weights actually loaded: the safetensors headers of every
        component's files (names, shapes, dtypes, offsets) and the size of every weight file.

        A fine-tuned UNet over a base model differs from the base, unlike :attr:`fingerprint`.
        """
        return weights_fingerprint(self.sources)

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
    def encode_prompts(self, prompts: list[str], cache: bool = True) -> torch.Tensor:
        """Text-encoder last hidden states, cached per prompt (``cache=False``: computed for
        this call only, for open-ended prompts such as caption nouns).

        Returns:
            (len(prompts), 77, D) in ``self.dtype`` on ``self.device``.
        """
        store = self._prompt_cache if cache else {}
        missing = [p for p in dict.fromkeys(prompts) if p not in store]
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
                store[prompt] = row.to(self.device, self.dtype)
        return torch.stack([store[p] for p in prompts])


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
    unet: str | None = None,
) -> Backbone:
    """Load the SD components of ``name`` once.

    Args:
        name: ``tiny``; a Hugging Face model id (``CompVis/stable-diffusion-v1-4``); a local
            directory in diffusers layout; or an fsspec URI of such a directory (``s3://...``),
            copied once into the local cache.
        device: defaults to CUDA when available.
        dtype: defaults to bf16/fp16 on GPU and fp32 on CPU (``"float16"`` etc. accepted).
        storage_options: fsspec options for remote model directories.
        unet: a replacement UNet (a fine-tuned one over the base model ``name``): a hub id, a
            local directory or an fsspec URI holding either a UNet (``config.json`` and weights
            at its root) or a diffusers model (its ``unet/`` is used).

    Raises:
        ModelLoadError: the model is missing, unreachable or not an SD checkpoint.
        MalformedSafetensors: a local weight file's header is malformed (checked first).
    """
    device = torch.device(device) if device is not None else default_device()
    dtype = _resolve_dtype(dtype, device)
    source = _resolve_source(name, storage_options)
    _check_local_weights(source)
    parts = _load_components(source, dtype)
    sources = {key: _component_dir(source, key) for key in COMPONENTS}
    if unet is not None:
        unet_source = _resolve_source(unet, storage_options, component="unet")
        _check_local_weights(unet_source)
        parts["unet"] = _load_unet_override(unet, unet_source, dtype)
        sources["unet"] = _component_dir(unet_source, "unet")
    _check_compatible(name, parts)
    for key in ("unet", "vae", "text_encoder"):
        module = parts[key]
        module.requires_grad_(False)
        module.eval()
    parts["unet"].to(device)  # already in `dtype`: loaded with torch_dtype
    parts["vae"].to(device)
    parts["text_encoder"].to(device)  # fp32 text encoder: tiny cost, exact prompts
    logger.info("loaded %s on %s (%s)", name, device, dtype)
    return Backbone(name=name, device=device, dtype=dtype, sources=sources, **parts)


def _resolve_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    if dtype is None or dtype == "auto":
        return default_dtype(device)
    if isinstance(dtype, str):
        if dtype not in DTYPE_NAMES:
            raise UserError(f"unknown dtype {dtype!r}: use float32, float16 or bfloat16")
        return getattr(torch, dtype)
    return dtype


def _check_local_weights(source: str) -> None:
    """A local model folder's safetensors headers, before any loader trusts them (a hub id is
    fetched by the loaders themselves: ``labeler run`` checks its cached files beforehand)."""
    if Path(source).is_dir():
        check_folder(source)


def _resolve_source(name: str, storage_options: dict | None, component: str | None = None,
                    builtin: Callable[[], Path] = tiny_model_dir) -> str:
    """A local directory or hub id that ``from_pretrained`` can read.

    ``component="unet"`` accepts a UNet folder (``config.json`` at its root) as well; another
    component (``captioner``) is a transformers folder with ``config.json`` at its root.
    ``builtin`` builds the folder that ``tiny`` names (the tiny SD, or the tiny captioner).
    """
    if name == TINY:
        return str(builtin())
    if "://" in name and not name.startswith("file://"):
        return str(_mirror_remote_dir(name, storage_options or {}, component))
    local = Path(name.removeprefix("file://")).expanduser()
    if local.exists():
        if component is not None and (local / "config.json").is_file():
            return str(local)
        if not (local / "unet").is_dir():
            raise ModelLoadError(f"{name} is not {_expected_layout(component)}")
        return str(local)
    if name.startswith((".", "/", "~")):
        raise ModelLoadError(f"model directory {name} does not exist")
    return name


def _expected_layout(component: str | None) -> str:
    """What a model folder for ``component`` must hold, for error messages."""
    if component in (None, "unet"):
        return f"a diffusers model directory: it has no unet/ folder (expected {', '.join(COMPONENTS)})"
    return f"a {component} model directory: it has no config.json"


def _mirror_remote_dir(uri: str, storage_options: dict, component: str | None = None) -> Path:
    """Copy a diffusers (or, with ``component``, a component) directory into the local cache,
    once per version of its files (:func:`labeler.io.files.folder_version`: a checkpoint that
    training rewrote on the store is copied again, never served stale)."""
    cache = Path(os.environ.get("LABELER_CACHE", Path.home() / ".cache" / "labeler"))
    version = folder_version(uri, storage_options)
    target = cache / "models" / hashlib.sha256(f"{uri}@{version}".encode()).hexdigest()[:16]
    if (target / ".complete").exists():
        return target
    fs, root, _ = open_fs(uri, storage_options)
    root_has = fs.exists(f"{root.rstrip('/')}/config.json") and component is not None
    if not root_has and not fs.exists(f"{root.rstrip('/')}/unet"):
        raise ModelLoadError(f"{redact_uri(uri)} is not {_expected_layout(component)}")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".remote-", dir=target.parent))
    read_folder(uri, staging, storage_options)  # file by file, retrying transient errors
    (staging / ".complete").touch()
    try:
        staging.rename(target)
    except OSError:
        if not (target / ".complete").exists():
            raise
    return target


def _load_components(source: str, dtype: torch.dtype) -> dict:
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
        except (OSError, ValueError) as error:
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


def _load_unet_override(name: str, source: str, dtype: torch.dtype) -> torch.nn.Module:
    subfolder = None if Path(source).joinpath("config.json").is_file() else "unet"
    try:
        return UNet2DConditionModel.from_pretrained(source, subfolder=subfolder, torch_dtype=dtype)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"could not load the UNet override {redact_uri(name)!r}: {error}") from error


def _component_dir(source: str, component: str) -> str:
    """The local directory ``component`` of ``source`` was read from (hub ids: the HF cache)."""
    root = Path(source)
    if not root.exists():
        root = Path(hub_snapshot(source) or source)
    if component == "unet" and (root / "config.json").is_file() and not (root / "unet").is_dir():
        return str(root)
    return str(root / component)
