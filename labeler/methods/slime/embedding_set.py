"""The SLiMe embedding set: one safetensors file with the learned embeddings and their metadata.

File layout:

* tensor ``embeddings``: (K-1, D) float32, row i is the embedding of class i+1 (token position
  i+1 of the prompt); class 0 (background) is the fixed BOS row and is not stored;
* one safetensors metadata entry, ``labeler.slime``: a JSON object with ``format``
  (``labeler-slime-embeddings``), ``format_version``, ``classes`` (K names, background first), ``model`` (the
  model id it was fit on), ``model_fingerprint`` (:func:`labeler.models.fingerprint.model_fingerprint`
  of that model's UNet/text-encoder config), ``prompt`` (the prompt whose other rows complete the
  conditioning), ``layers`` (the layer selectors), ``channel_order``, ``inference`` (inference
  settings) and ``fit`` (fit settings and provenance).

Nothing in the file is pickled. The official release format (a folder of ``embedding_i.pth``
tensors of shape (1, 1, D)) is read by :func:`import_official` with ``torch.load(weights_only=True)``
and shape checks.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import pickle
import re
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import torch
from diffusers import UNet2DConditionModel
from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError, field_validator
from pydantic import Field as PydanticField
from safetensors.torch import load, save
from transformers import CLIPTextConfig

from labeler.attention.layers import is_selector
from labeler.errors import NotFoundError, UserError
from labeler.io.files import write_file
from labeler.io.folders import Folder
from labeler.io.listing import path_kind
from labeler.io.reading import read_file
from labeler.io.uris import redact_uri
from labeler.methods.slime.algorithm import DEFAULT_LAYERS
from labeler.methods.slime.settings import (
    MAX_TOKENS,
    SlimeOptions,
    recorded_inference_defaults,
    validate_classes,
)
from labeler.models.backbone import ModelLoadError, _resolve_source
from labeler.models.fingerprint import model_fingerprint
from labeler.models.locate import SD21_BASE
from labeler.models.safetensors_header import METADATA, parse_header
from labeler.settings import describe_error

logger = logging.getLogger(__name__)

FORMAT = "labeler-slime-embeddings"
FORMAT_VERSION = "1"
METADATA_KEY = "labeler.slime"
#: The reference fits on SD 2.1-base.
DEFAULT_MODEL = SD21_BASE
#: The word the reference repeats K times to build the initial prompt.
PROMPT_WORD = "part"


class IncompatibleModelError(UserError):
    """An embedding set applied to a model it was not fit on."""


def default_prompt(num_classes: int) -> str:
    """The reference prompt: ``part`` repeated K times."""
    return " ".join([PROMPT_WORD] * num_classes)


@dataclass
class EmbeddingSet:
    """K-1 learned text embeddings and everything needed to apply them.

    Attributes:
        embeddings: (K-1, D) float32 on CPU.
        classes: K class names, background first.
        model: the model id / path the set was fit on (the default model to apply it with).
        model_fingerprint: fingerprint of that model's UNet + text-encoder config (None: unknown,
            then only the embedding width is checked).
        prompt: the prompt whose text-encoder output gives the fixed rows (BOS, rows >= K).
        layers: ``{"cross": [...], "self": [...]}`` layer selectors
            (see :func:`labeler.attention.layers.resolve_layers`).
        channel_order: ``rgb`` or ``bgr``: what the VAE saw during the fit.
        inference: inference settings (a subset of :class:`labeler.methods.slime.SlimeOptions`).
        fit: fit settings and provenance.
        sha256: 16 hex digits of the file's bytes (set when saved or loaded).
    """

    embeddings: torch.Tensor
    classes: tuple[str, ...]
    model: str
    model_fingerprint: str | None
    prompt: str
    layers: dict[str, list[str]]
    channel_order: str = "rgb"
    inference: dict[str, Any] = field(default_factory=dict)
    fit: dict[str, Any] = field(default_factory=dict)
    sha256: str | None = None

    def __post_init__(self) -> None:
        self.classes = tuple(self.classes)
        validate_classes(self.classes)
        if self.embeddings.ndim != 2 or self.embeddings.shape[0] != len(self.classes) - 1:
            raise UserError(
                f"embeddings must be (K-1, D) = ({len(self.classes) - 1}, D) for {len(self.classes)} "
                f"classes, got {tuple(self.embeddings.shape)}"
            )
        if not torch.isfinite(self.embeddings).all():
            raise UserError("embeddings contain NaN or infinite values")
        if self.channel_order not in ("rgb", "bgr"):
            raise UserError(f"channel_order must be rgb or bgr, got {self.channel_order!r}")
        if set(self.layers) != {"cross", "self"}:
            raise UserError("layers must name 'cross' and 'self' selectors")
        self.embeddings = self.embeddings.detach().to("cpu", torch.float32).contiguous()

    @property
    def num_classes(self) -> int:
        """K, background included."""
        return len(self.classes)

    @property
    def dim(self) -> int:
        """D, the text-embedding width."""
        return int(self.embeddings.shape[1])

    def categories(self) -> list[dict]:
        """COCO categories: ids 1..K-1 for the non-background classes."""
        return [
            {"id": index, "name": name, "supercategory": "slime"}
            for index, name in enumerate(self.classes)
            if index > 0
        ]

    def inference_options(self):
        """The recorded inference settings as :class:`labeler.methods.slime.SlimeOptions`."""
        return SlimeOptions.from_mapping(self.inference)

    # ---- the model ----------------------------------------------------------------------------

    def check_compatible(self, backbone) -> None:
        """Refuse a model whose architecture differs from the one the set was fit on.

        Raises:
            IncompatibleModelError: with what differs and what to do.
        """
        width = int(backbone.text_encoder.config.hidden_size)
        if self.model_fingerprint is not None and self.model_fingerprint != backbone.fingerprint:
            raise IncompatibleModelError(
                f"this embedding set was fit on model {self.model!r} (fingerprint "
                f"{self.model_fingerprint}, {self.dim}-wide text embeddings), but model "
                f"{backbone.name!r} has fingerprint {backbone.fingerprint} ({width}-wide): its "
                f"UNet or text encoder differ. Apply the set with --model {self.model}, or fit a "
                f"new set on {backbone.name}."
            )
        if width != self.dim:
            raise IncompatibleModelError(
                f"this embedding set holds {self.dim}-wide embeddings but model {backbone.name!r} "
                f"takes {width}-wide text embeddings; apply it with --model {self.model}"
            )

    def conditioning(self, backbone) -> torch.Tensor:
        """The text conditioning: the prompt's rows with rows 1..K-1 replaced by the embeddings.

        Returns:
            (1, 77, D) in the backbone's dtype and device.
        """
        base = prompt_embeddings(backbone, self.prompt)
        return assemble_context(base, self.embeddings.to(base.device))[None].to(backbone.device, backbone.dtype)

    # ---- file ---------------------------------------------------------------------------------

    def digest(self) -> str:
        """16 hex digits of sha256 of the file (of its serialisation when not saved yet)."""
        if self.sha256 is None:
            self.sha256 = file_digest(self.to_bytes())
        return self.sha256

    def metadata(self) -> dict[str, Any]:
        return {
            "classes": list(self.classes),
            "model": self.model,
            "model_fingerprint": self.model_fingerprint,
            "prompt": self.prompt,
            "layers": {kind: list(selectors) for kind, selectors in self.layers.items()},
            "channel_order": self.channel_order,
            "inference": self.inference,
            "fit": self.fit,
        }

    def to_bytes(self) -> bytes:
        """The safetensors serialisation (deterministic: same set, same bytes)."""
        # one metadata entry: safetensors keeps metadata in a hash map, so several entries would
        # be written in a varying order and the same set would not always give the same bytes
        record = {"format": FORMAT, "format_version": FORMAT_VERSION, **self.metadata()}
        return save({"embeddings": self.embeddings}, metadata={METADATA_KEY: json.dumps(record, sort_keys=True)})

    def save(self, uri: str, storage_options: dict | None = None) -> str:
        """Write the set to a local path or fsspec URI (atomically, through :mod:`labeler.io`);
        returns its sha256 (16 hex)."""
        data = self.to_bytes()
        write_file(uri, data, storage_options)
        self.sha256 = file_digest(data)
        return self.sha256

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<bytes>") -> EmbeddingSet:
        """Parse a safetensors embedding set (no unpickling).

        The header, the tensor's declared dtype, shape and offsets, and the metadata (classes,
        layer selectors, channel order, inference settings through
        :class:`~labeler.methods.slime.settings.SlimeOptions`) are checked before any tensor
        data is read.

        Raises:
            ValueError: one line saying what is malformed (``source`` names the file).
        """
        header, metadata = read_safetensors_header(data, source)
        try:
            meta = json.loads(metadata[METADATA_KEY])
        except (KeyError, TypeError, json.JSONDecodeError):
            meta = {}
        if not isinstance(meta, dict):
            meta = {}
        if meta.get("format") != FORMAT:
            raise UserError(
                f"{source} is not a labeler SLiMe embedding set (no {FORMAT!r} metadata); "
                "official SLiMe checkpoints (folders of embedding_i.pth) are converted with "
                "`labeler slime import`"
            )
        if meta.get("format_version") != FORMAT_VERSION:
            raise UserError(f"{source}: unsupported embedding-set version {meta.get('format_version')!r}")
        record = _parse_record(meta, source)
        _check_tensor_entry(header, len(record.classes) - 1, source)
        try:
            tensors = load(data)
        except Exception as error:  # noqa: BLE001 - safetensors' own error type: malformed data
            raise UserError(f"{source}: unreadable tensor data ({error})") from None
        try:
            return cls(
                embeddings=tensors["embeddings"],
                classes=tuple(record.classes),
                model=record.model,
                model_fingerprint=record.model_fingerprint,
                prompt=record.prompt,
                layers={kind: list(selectors) for kind, selectors in record.layers.items()},
                channel_order=record.channel_order,
                inference=record.inference,
                fit=record.fit,
                sha256=file_digest(data),
            )
        except ValueError as error:
            raise UserError(f"{source}: {error}") from None

    @classmethod
    def load(cls, uri: str, storage_options: dict | None = None) -> EmbeddingSet:
        """Read a set from a local path or fsspec URI."""
        try:
            data = read_file(uri, storage_options)
        except FileNotFoundError as error:
            raise NotFoundError(f"embedding set {redact_uri(uri)} does not exist") from error
        return cls.from_bytes(data, redact_uri(uri))


class _Record(BaseModel):
    """The ``labeler.slime`` metadata record (format and version checked before)."""

    model_config = ConfigDict(extra="ignore")

    classes: list[Annotated[str, StringConstraints(min_length=1)]] = PydanticField(
        min_length=2, max_length=MAX_TOKENS - 2)
    model: str
    model_fingerprint: str | None = None
    prompt: str
    layers: dict[Literal["cross", "self"], list[str]]
    channel_order: Literal["rgb", "bgr"] = "rgb"
    inference: dict[str, Any] = PydanticField(default_factory=dict)
    fit: dict[str, Any] = PydanticField(default_factory=dict)

    @field_validator("layers")
    @classmethod
    def _selectors(cls, layers: dict[str, list[str]]) -> dict[str, list[str]]:
        if set(layers) != {"cross", "self"}:
            raise UserError("must name 'cross' and 'self' selectors")
        for kind, selectors in layers.items():
            bad = [selector for selector in selectors if not is_selector(selector)]
            if not selectors or bad:
                raise UserError(f"{kind}: bad layer selectors {bad or selectors!r} "
                                 "(use block/kind/side[:n], e.g. up/cross/16)")
        return layers


def _parse_record(meta: dict, source: str) -> _Record:
    """The record validated, its inference settings through :class:`SlimeOptions`.

    Raises:
        ValueError: one line naming the first bad field.
    """
    try:
        record = _Record.model_validate(meta)
    except ValidationError as error:
        raise UserError(f"{source}: metadata {describe_error(error)}") from None
    try:
        SlimeOptions.from_mapping(record.inference)
    except ValueError as error:
        raise UserError(f"{source}: recorded inference settings: {error}") from None
    return record


#: Widest text embedding accepted (SD 1.x: 768, SD 2.x: 1024).
MAX_EMBEDDING_DIM = 8192
_FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")


def _check_tensor_entry(header: dict, rows: int, source: str) -> None:
    """The header's ``embeddings`` entry: a float (rows, D) tensor.

    The header was checked by :func:`labeler.models.safetensors_header.parse_header` (offsets
    inside the data, sized for the dtype and shape), so a huge declared shape or offsets past the
    data never reach the tensor reader.
    """
    entries = {name: value for name, value in header.items() if name != METADATA}
    if set(entries) != {"embeddings"}:
        raise UserError(f"{source}: expected one tensor 'embeddings', found {sorted(entries)}")
    entry = entries["embeddings"]
    dtype, shape = entry["dtype"], entry["shape"]
    if dtype not in _FLOAT_DTYPES:
        raise UserError(f"{source}: embeddings must be a float tensor, got dtype {dtype!r}")
    if len(shape) != 2 or shape[0] != rows or not 1 <= shape[1] <= MAX_EMBEDDING_DIM:
        raise UserError(f"{source}: embeddings must be ({rows}, D) with 1 <= D <= "
                        f"{MAX_EMBEDDING_DIM} for {rows + 1} classes, got shape {shape!r}")


def file_digest(data: bytes) -> str:
    """16 hex digits of sha256: the ``embedding_set`` provenance of every annotation."""
    return hashlib.sha256(data).hexdigest()[:16]


def read_safetensors_header(data: bytes, source: str = "<bytes>") -> tuple[dict, dict[str, str]]:
    """The checked header of a safetensors blob and its ``__metadata__`` (nothing executed)."""
    header = parse_header(data, len(data), source)
    return header, header.get(METADATA) or {}


# --------------------------------------------------------------------------------------------
# Conditioning.
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def prompt_embeddings(backbone, prompt: str) -> torch.Tensor:
    """The text encoder's last hidden state for ``prompt``, in fp32.

    Returns:
        (77, D) float32 on the text encoder's device.
    """
    tokens = backbone.tokenizer(
        [prompt],
        padding="max_length",
        max_length=backbone.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(backbone.text_encoder.device)
    return backbone.text_encoder(tokens)[0][0].float()


def assemble_context(base: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
    """Row 0 and rows >= K from ``base``, rows 1..K-1 from ``embeddings`` (differentiable).

    Args:
        base: (77, D) prompt embedding.
        embeddings: (K-1, D).

    Returns:
        (77, D) in float32.
    """
    count = embeddings.shape[0]
    return torch.cat([base[:1].float(), embeddings.float(), base[1 + count :].float()])


# --------------------------------------------------------------------------------------------
# Model fingerprints without loading weights, and the official format.
# --------------------------------------------------------------------------------------------


def config_fingerprint(model: str) -> str:
    """The fingerprint of ``model`` from its configs alone (no weights loaded).

    Raises:
        labeler.models.backbone.ModelLoadError: the configs cannot be read.
    """
    source = _resolve_source(model, None)
    try:
        unet_config = UNet2DConditionModel.load_config(source, subfolder="unet")
        text_config = CLIPTextConfig.from_pretrained(source, subfolder="text_encoder")
    except (OSError, ValueError) as error:
        raise ModelLoadError(
            f"could not read the configs of model {model!r} ({error}); pass --model as a local "
            "diffusers directory or a Hugging Face id available on this machine"
        ) from error
    return model_fingerprint(unet_config, text_config)


_OFFICIAL_NAME = re.compile(r"^embedding_(\d+)\.pth$")


def read_official_embeddings(folder: str, storage_options: dict | None = None) -> torch.Tensor:
    """Read the official release format: ``embedding_0.pth .. embedding_{K-2}.pth``.

    Each file must hold one float tensor of shape (1, 1, D) (the reference's), (1, D) or (D,);
    it is read with ``torch.load(weights_only=True)``, so no code is unpickled.

    Returns:
        (K-1, D) float32.

    Raises:
        ValueError: no files, gaps in the numbering, wrong shapes or dtypes.
    """
    if path_kind(folder, storage_options=storage_options) != "directory":
        raise UserError(f"{redact_uri(folder)} is not a folder of embedding_i.pth files")
    files = Folder(folder, storage_options)
    found = {}
    for name in files.list(""):
        match = _OFFICIAL_NAME.match(name)
        if match:
            found[int(match.group(1))] = name
    if not found:
        raise UserError(f"{folder} holds no embedding_i.pth files")
    if sorted(found) != list(range(len(found))):
        raise UserError(f"{folder}: embedding files must be numbered 0..{len(found) - 1}, found {sorted(found)}")
    rows = []
    for index in range(len(found)):
        try:
            data = read_file(files.uri_of(found[index]), storage_options)
            tensor = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise UserError(
                f"embedding_{index}.pth holds more than plain tensors; refused (read with "
                f"weights_only=True): {str(error).splitlines()[0]}"
            ) from error
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            raise UserError(f"embedding_{index}.pth does not hold a float tensor")
        if tensor.ndim not in (1, 2, 3) or any(size != 1 for size in tensor.shape[:-1]):
            raise UserError(f"embedding_{index}.pth has shape {tuple(tensor.shape)}, expected (1, 1, D)")
        rows.append(tensor.detach().reshape(-1).float())
    widths = {row.numel() for row in rows}
    if len(widths) != 1:
        raise UserError(f"{folder}: embeddings have different widths {sorted(widths)}")
    return torch.stack(rows)


def import_official(
    folder: str,
    classes: tuple[str, ...],
    model: str = DEFAULT_MODEL,
    model_fingerprint: str | None = None,
    channel_order: str = "bgr",
    storage_options: dict | None = None,
) -> EmbeddingSet:
    """Convert an official SLiMe checkpoint folder into an :class:`EmbeddingSet`.

    Args:
        folder: local path or fsspec URI of the ``embedding_i.pth`` folder.
        classes: K names, background first (the reference's ``--part_names``), K-1 = file count.
        model: the model the embeddings were fit on (the reference: SD 2.1-base).
        model_fingerprint: its fingerprint (see :func:`config_fingerprint`); None = unchecked.
        channel_order: the reference feeds BGR since 2023-09-28; the authors' released
            embeddings may predate that, so try ``rgb`` if ``bgr`` labels poorly.
    """
    embeddings = read_official_embeddings(folder, storage_options)
    if embeddings.shape[0] != len(classes) - 1:
        raise UserError(
            f"{folder} holds {embeddings.shape[0]} embeddings, so K = {embeddings.shape[0] + 1} "
            f"classes (background first), but {len(classes)} class names were given"
        )
    return EmbeddingSet(
        embeddings=embeddings,
        classes=tuple(classes),
        model=model,
        model_fingerprint=model_fingerprint,
        prompt=default_prompt(len(classes)),
        layers={kind: list(selectors) for kind, selectors in DEFAULT_LAYERS.items()},
        channel_order=channel_order,
        inference=recorded_inference_defaults(),
        fit={"imported_from": _redacted(folder), "source_format": "official SLiMe embedding_i.pth"},
    )


def _redacted(uri: str) -> str:
    return redact_uri(uri)
