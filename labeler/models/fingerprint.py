"""Model fingerprints, computed without loading a model (no torch): of the parts of a model
configuration that learned embeddings depend on (:func:`model_fingerprint`), of the weights a
model folder holds (:func:`weights_fingerprint`), and of the model a run names, for its
fingerprint (:func:`named_weights_digest`)."""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping
from pathlib import Path

from labeler.io.files import folder_version
from labeler.models.locate import TINY

UNET_KEYS = (
    "sample_size",
    "in_channels",
    "block_out_channels",
    "down_block_types",
    "up_block_types",
    "layers_per_block",
    "cross_attention_dim",
    "attention_head_dim",
    "num_attention_heads",
)
TEXT_KEYS = ("hidden_size", "num_hidden_layers", "vocab_size", "max_position_embeddings")


def model_fingerprint(unet_config: Mapping, text_config: object) -> str:
    """16 hex chars identifying the UNet architecture and text-encoder shape.

    Only architecture keys enter the hash, so the same checkpoint loaded in another dtype or
    diffusers version keeps its fingerprint.
    """
    unet = {key: _plain(unet_config.get(key)) for key in UNET_KEYS}
    text = {key: _plain(getattr(text_config, key, None)) for key in TEXT_KEYS}
    blob = json.dumps({"unet": unet, "text": text}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _plain(value: object) -> object:
    return list(value) if isinstance(value, (tuple, list)) else value


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


#: Samples of each weight file that enter its digest: enough to tell a fine-tune from its base
#: (which changes every tensor) without reading gigabytes.
DIGEST_SAMPLES, DIGEST_SAMPLE_BYTES = 32, 64 * 1024


def weights_fingerprint(sources: dict[str, str]) -> str:
    """16 hex chars over the weight files of each component directory.

    A file contributes its name, its size, its safetensors header (tensor names, dtypes, shapes,
    offsets) when it has one, and ``DIGEST_SAMPLES`` evenly spaced samples of its bytes, so two
    checkpoints of one architecture (a fine-tuned UNet and its base) differ. Directories that do
    not exist locally contribute their name.
    """
    digest = hashlib.sha256()
    for component in sorted(sources):
        folder = Path(sources[component])
        digest.update(f"[{component}]".encode())
        files = sorted(p for p in folder.glob("*") if p.suffix in WEIGHT_SUFFIXES) if folder.is_dir() else []
        if not files:
            digest.update(str(folder).encode())
        for path in files:
            digest.update(f"{path.name}:{path.stat().st_size}".encode())
            if path.suffix == ".safetensors":
                digest.update(_safetensors_header(path))
            digest.update(_sampled_bytes(path))
    return digest.hexdigest()[:16]


def _safetensors_header(path: Path) -> bytes:
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        return handle.read(min(length, 100_000_000))


def _sampled_bytes(path: Path) -> bytes:
    size = path.stat().st_size
    step = max(size // DIGEST_SAMPLES, 1)
    chunks = []
    with path.open("rb") as handle:
        for offset in range(0, size, step)[:DIGEST_SAMPLES]:
            handle.seek(offset)
            chunks.append(handle.read(DIGEST_SAMPLE_BYTES))
    return hashlib.sha256(b"".join(chunks)).digest()


def named_weights_digest(name: str, component: str) -> str | None:
    """A digest of the weights of the model folder ``name`` names, for a run's fingerprint, so
    a model rewritten at the same path is another run.

    A local folder (a path or ``file://``): :func:`weights_fingerprint` of every folder in it that
    holds weight files (a flat component folder, or a diffusers folder's ``unet/``, ``vae/``,
    ...), keyed by its path relative to ``name``: file names, sizes, safetensors headers and
    ``DIGEST_SAMPLES`` samples of ``DIGEST_SAMPLE_BYTES`` per file, never the whole file. The
    same weights copied to another path have the same digest. An fsspec URI: its files' version
    stamps (:func:`labeler.io.files.folder_version`: paths, sizes, ETags or mtimes), one listing,
    no bytes read. None for ``tiny`` (built by this version's code), a Hugging Face id (a name
    on the Hub, whatever this machine's cache holds) and a local folder without weight files:
    they enter a fingerprint by name.
    """
    if name == TINY:
        return None
    if "://" in name and not name.startswith("file://"):
        return folder_version(name)
    local = Path(name.removeprefix("file://")).expanduser()
    if not local.is_dir():
        return None
    holders = sorted({path.parent for path in local.rglob("*")
                      if path.suffix in WEIGHT_SUFFIXES and path.is_file()})
    if not holders:
        return None
    return weights_fingerprint({_component_key(component, folder.relative_to(local)): str(folder)
                                for folder in holders})


def _component_key(component: str, relative: Path) -> str:
    """``component`` for the folder's root (a flat folder's digest as a component's), else
    ``component/relative``."""
    return component if relative == Path(".") else f"{component}/{relative.as_posix()}"
