"""The DiffewS UNet: a stock diffusers UNet whose input conv also takes 8-channel supports.

A DiffewS UNet has two input convolutions: the original ``conv_in`` (4 -> C, the query latent) and
``conv_in_ref`` (8 -> C, a support: image latent then mask latent along channels).
:class:`DualInputConv` replaces ``unet.conv_in`` and picks one by the input's channel count, so
the stock ``UNet2DConditionModel.forward`` runs unchanged for both passes.

Checkpoints keep the official layout: the UNet's safetensors holds ``conv_in.weight/bias`` and the
extra ``conv_in_ref.weight/bias``. Stock diffusers drops the extra tensors when loading (with a
warning), so :func:`read_support_conv` reads them from the safetensors files directly. A base SD
model has no ``conv_in_ref``: inference refuses it (:class:`NotADiffewsModel`); training starts
from the reference's duplicate-and-halve initialisation (:func:`duplicate_and_halve`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from huggingface_hub import snapshot_download
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from labeler.errors import UserError
from labeler.io.files import write_folder, write_in
from labeler.io.folders import Folder
from labeler.models.backbone import Backbone, _resolve_source, load_backbone
from labeler.models.safetensors_header import check_file

#: Tensor names of the support conv in a DiffewS UNet checkpoint (official naming).
SUPPORT_WEIGHT = "conv_in_ref.weight"
SUPPORT_BIAS = "conv_in_ref.bias"
UNET_WEIGHTS = "diffusion_pytorch_model.safetensors"
#: diffusers' loggers that report the support conv's tensors and config key as unused.
_LOADING_LOGGERS = ("diffusers.configuration_utils", "diffusers.models.modeling_utils")


class _SupportConvNotices(logging.Filter):
    """Drops diffusers' notices that ``conv_in_ref`` / ``in_channels_ref`` "will be ignored":
    stock diffusers skips them, and :func:`read_support_conv` loads them."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "conv_in_ref" not in message and "in_channels_ref" not in message


@contextlib.contextmanager
def _quiet_about_support_conv() -> Iterator[None]:
    """While loading a DiffewS UNet with stock diffusers: no misleading "not used" warnings."""
    notices = _SupportConvNotices()
    loggers = [logging.getLogger(name) for name in _LOADING_LOGGERS]
    for logger in loggers:
        logger.addFilter(notices)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(notices)


class NotADiffewsModel(UserError):
    """The model's UNet has no 8-channel support conv (``conv_in_ref``)."""


class DualInputConv(nn.Module):
    """The UNet's input conv for both passes: 4 channels (query) or 8 (support).

    Args:
        query: the original ``conv_in`` (4 -> C).
        support: ``conv_in_ref`` (8 -> C), same kernel, stride and padding.
    """

    def __init__(self, query: nn.Conv2d, support: nn.Conv2d) -> None:
        super().__init__()
        if support.in_channels != 2 * query.in_channels or support.out_channels != query.out_channels:
            raise ValueError(
                f"support conv must be {2 * query.in_channels} -> {query.out_channels} channels, "
                f"got {support.in_channels} -> {support.out_channels}"
            )
        self.query = query
        self.support = support

    def forward(self, sample: Tensor) -> Tensor:
        """(B, 4, h, w) query or (B, 8, h, w) support latents -> (B, C, h, w) features."""
        channels = sample.shape[1]
        if channels == self.query.in_channels:
            return self.query(sample)
        if channels == self.support.in_channels:
            return self.support(sample)
        raise ValueError(
            f"DiffewS UNet input must have {self.query.in_channels} (query) or "
            f"{self.support.in_channels} (support) channels, got {channels}"
        )


def duplicate_and_halve(conv_in: nn.Conv2d) -> nn.Conv2d:
    """The reference's ``conv_in_ref`` init: ``conv_in``'s weight repeated along input channels,
    halved; bias copied. On ``[z || z]`` it gives exactly ``conv_in(z)``.

    Returns:
        a new (2 * C_in) -> C_out conv with the dtype and device of ``conv_in``.
    """
    support = nn.Conv2d(
        2 * conv_in.in_channels, conv_in.out_channels, conv_in.kernel_size,
        stride=conv_in.stride, padding=conv_in.padding,
    ).to(conv_in.weight.device, conv_in.weight.dtype)
    with torch.no_grad():
        support.weight.copy_(torch.cat([conv_in.weight, conv_in.weight], dim=1) / 2)
        support.bias.copy_(conv_in.bias)
    return support


def support_conv_from_tensors(conv_in: nn.Conv2d, weight: Tensor, bias: Tensor) -> nn.Conv2d:
    """A support conv shaped like ``conv_in`` but with 2x input channels, holding ``weight``/``bias``."""
    expected = (conv_in.out_channels, 2 * conv_in.in_channels, *conv_in.kernel_size)
    if tuple(weight.shape) != expected or tuple(bias.shape) != (conv_in.out_channels,):
        raise NotADiffewsModel(
            f"conv_in_ref has shape {tuple(weight.shape)} (bias {tuple(bias.shape)}), expected "
            f"{expected}: the checkpoint does not match its UNet"
        )
    support = duplicate_and_halve(conv_in)
    with torch.no_grad():
        support.weight.copy_(weight)
        support.bias.copy_(bias)
    return support


def install_dual_conv(unet, support: nn.Conv2d) -> DualInputConv:
    """Replace ``unet.conv_in`` by a :class:`DualInputConv` (idempotent on the query conv)."""
    query = unet.conv_in.query if isinstance(unet.conv_in, DualInputConv) else unet.conv_in
    dual = DualInputConv(query, support)
    unet.conv_in = dual
    return dual


def unet_files(unet_dir: Path) -> list[Path]:
    """The safetensors weight files of a diffusers UNet folder (single or sharded)."""
    files = sorted(unet_dir.glob("*.safetensors"))
    if not files:
        raise NotADiffewsModel(
            f"{unet_dir} holds no .safetensors weights (only safetensors checkpoints are read)"
        )
    return files


def read_support_conv(unet_dir: str | Path) -> tuple[Tensor, Tensor]:
    """``conv_in_ref`` weight and bias, read from a UNet folder's safetensors files.

    Raises:
        NotADiffewsModel: no file holds ``conv_in_ref.weight`` and ``conv_in_ref.bias``.
        MalformedSafetensors: a file's header is malformed (checked before it is opened).
    """
    unet_dir = Path(unet_dir)
    found: dict[str, Tensor] = {}
    for path in unet_files(unet_dir):
        check_file(path)
        with safe_open(str(path), framework="pt") as handle:
            names = set(handle.keys())
            for name in (SUPPORT_WEIGHT, SUPPORT_BIAS):
                if name in names:
                    found[name] = handle.get_tensor(name)
    if len(found) != 2:
        raise NotADiffewsModel(
            f"{unet_dir.parent} is not a DiffewS checkpoint: its UNet has no {SUPPORT_WEIGHT} "
            "(the 8-channel support conv). Train one from this base with `labeler diffews train "
            "--model BASE ...`, or pass a DiffewS checkpoint folder."
        )
    return found[SUPPORT_WEIGHT], found[SUPPORT_BIAS]


def weights_digest(unet_dir: str | Path) -> str:
    """16 hex digits of the sha256 over the UNet folder's safetensors files (provenance)."""
    digest = hashlib.sha256()
    for path in unet_files(Path(unet_dir)):
        digest.update(path.name.encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def diffews_state_dict(unet) -> dict[str, Tensor]:
    """The UNet's weights in the official checkpoint naming (``conv_in.*`` and ``conv_in_ref.*``)."""
    if not isinstance(unet.conv_in, DualInputConv):
        raise NotADiffewsModel("the UNet has no support conv installed")
    renamed = {}
    for name, tensor in unet.state_dict().items():
        if name.startswith("conv_in.query."):
            name = "conv_in." + name.removeprefix("conv_in.query.")
        elif name.startswith("conv_in.support."):
            name = "conv_in_ref." + name.removeprefix("conv_in.support.")
        renamed[name] = tensor.detach().contiguous()
    return renamed


def save_diffews_unet(unet, unet_dir: str | Path, dtype: torch.dtype | None = None) -> None:
    """Write a diffusers UNet folder (config.json + safetensors) that also holds ``conv_in_ref``.

    Stock ``UNet2DConditionModel.from_pretrained`` loads it (ignoring the extra tensors and config
    key); :func:`read_support_conv` restores the support conv.
    """
    unet_dir = Path(unet_dir)
    unet_dir.mkdir(parents=True, exist_ok=True)
    tensors = diffews_state_dict(unet)
    if dtype is not None:
        tensors = {name: tensor.to(dtype) for name, tensor in tensors.items()}
    save_file({k: v.cpu() for k, v in tensors.items()}, str(unet_dir / UNET_WEIGHTS),
              metadata={"format": "pt"})
    unet.save_config(unet_dir)
    config_path = unet_dir / "config.json"
    config = json.loads(config_path.read_text())
    config["in_channels_ref"] = unet.conv_in.support.in_channels
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))


def model_unet_dir(name: str, storage_options: dict | None = None) -> Path:
    """The local ``unet/`` folder of a model given as ``tiny``, a directory, a URI or a hub id.

    Directories and URIs resolve as :func:`labeler.models.backbone.load_backbone` resolves them
    (remote folders are mirrored once into the cache); a hub id resolves to its cached snapshot.
    """
    source = _resolve_source(name, storage_options)
    local = Path(source)
    if local.is_dir():
        return local / "unet"
    return Path(snapshot_download(source, allow_patterns=["unet/*"])) / "unet"


def load_diffews_backbone(
    name: str,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    storage_options: dict | None = None,
) -> tuple[Backbone, str]:
    """Load a DiffewS checkpoint: the SD components plus the UNet's support conv.

    Args:
        name: ``tiny`` is refused (no support conv); a directory in diffusers layout whose
            ``unet/`` holds ``conv_in_ref``, its fsspec URI, or a hub id.

    Returns:
        the backbone (``unet.conv_in`` is a :class:`DualInputConv`) and the 16-hex digest of the
        UNet weights.

    Raises:
        NotADiffewsModel: the UNet has no ``conv_in_ref`` (a base SD model).
    """
    unet_dir = model_unet_dir(name, storage_options)
    weight, bias = read_support_conv(unet_dir)
    with _quiet_about_support_conv():
        backbone = load_backbone(name, device=device, dtype=dtype, storage_options=storage_options)
    support = support_conv_from_tensors(backbone.unet.conv_in, weight, bias)
    support.requires_grad_(False)
    install_dual_conv(backbone.unet, support)
    return backbone, weights_digest(unet_dir)


def write_unet(unet, folder: Folder, under: str = "unet") -> None:
    """Write the DiffewS UNet folder (:func:`save_diffews_unet`) to ``folder``'s ``under``, on
    any filesystem, through the storage layer: staged locally, then each file published whole,
    with retries.

    Its ``config.json`` is the same at every save of one UNet, so a reader (or a resumed
    training) never pairs weights with another save's config.
    """
    with tempfile.TemporaryDirectory(prefix="labeler-unet-") as staging:
        save_diffews_unet(unet, staging)
        write_folder(staging, folder, under)


def write_checkpoint(backbone: Backbone, output: str | Path,
                     storage_options: dict | None = None) -> str | Path:
    """Write a DiffewS checkpoint folder (diffusers layout) that ``--model DIR`` loads.

    The VAE, text encoder, tokenizer and scheduler are the backbone's; ``unet/`` holds the UNet
    with ``conv_in_ref`` (see :func:`save_diffews_unet`). ``output`` is a local folder or any
    fsspec URI: the components are saved into a local staging folder and published file by file
    through :mod:`labeler.io` (atomic, retried, credentials redacted from messages), the
    ``model_index.json`` that makes the folder a model last.

    Returns:
        ``output``.
    """
    folder = Folder(str(output), storage_options)
    with tempfile.TemporaryDirectory(prefix="labeler-checkpoint-") as staging:
        for name in ("vae", "text_encoder", "tokenizer", "scheduler"):
            getattr(backbone, name).save_pretrained(Path(staging) / name)
        save_diffews_unet(backbone.unet, Path(staging) / "unet")
        write_folder(staging, folder)
    index = json.dumps({"_class_name": "StableDiffusionPipeline", "_labeler_diffews": 1}).encode()
    write_in(folder, "model_index.json", index)
    return output


def import_checkpoint(base: str, unet_dir: str | Path, output: str | Path,
                      storage_options: dict | None = None) -> str | Path:
    """Assemble an official DiffewS release (a base SD folder + a fine-tuned ``unet`` folder)
    into one checkpoint folder.

    Args:
        base: the base model (its VAE, text encoder, tokenizer, scheduler are kept).
        unet_dir: a diffusers UNet folder whose safetensors hold ``conv_in_ref`` (local or any
            fsspec URI, read through :mod:`labeler.io`).
        output: the checkpoint folder to write, local or any fsspec URI.
    """
    unet_dir = Path(_resolve_source(str(unet_dir), storage_options, component="unet"))
    weight, bias = read_support_conv(unet_dir)
    backbone = load_backbone(base, device="cpu", dtype=torch.float32, storage_options=storage_options)
    with _quiet_about_support_conv():
        unet = UNet2DConditionModel.from_pretrained(str(unet_dir), torch_dtype=torch.float32)
    install_dual_conv(unet, support_conv_from_tensors(unet.conv_in, weight, bias))
    backbone.unet = unet
    return write_checkpoint(backbone, output, storage_options)
