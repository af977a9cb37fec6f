"""Checks that run before ``labeler run`` touches the output folder or starts Ray.

Each refuses a user mistake with a one-line :class:`~labeler.errors.UserError`, in seconds and
without network waits: the device exists, the output is a writable folder (or can be created),
every model resolves offline (a Hugging Face id: in the local cache, unless ``--address`` puts the
workers on a cluster with caches of their own), and the method's own resources are usable (SLiMe: the embedding
set). The input is checked by :func:`labeler.runtime.job.input_items` right after.
"""

from __future__ import annotations

import os
from pathlib import Path

from labeler.config import JobConfig
from labeler.errors import UserError
from labeler.io.listing import path_kind
from labeler.io.policy import protocol_of
from labeler.io.uris import is_local_fs, open_fs, redact_uri
from labeler.models.locate import ModelLoadError, locate_model


def preflight(config: JobConfig, storage_options: dict | None = None) -> None:
    """Refuse a job that cannot run, before anything is written.

    Raises:
        UserError: what is wrong, naming the setting.
    """
    check_device(config.device, remote=config.address is not None)
    check_output(config.output, storage_options)
    check_output_outside_input(config.input, config.output)
    context = config.method_context()
    for name in filter(None, [context.model, *config.spec.models(context)]):
        try:
            locate_model(name, storage_options, remote=config.address is not None)
        except ModelLoadError as error:
            raise UserError(f"--model: {error}") from None
    config.spec.check(context)


def check_device(device: str | None, remote: bool = False) -> None:
    """``device`` names a device this machine has (``remote``: the workers are elsewhere, so only
    its spelling is checked)."""
    if device is None or device == "cpu":
        return
    import torch  # only for a device other than the CPU: refusals stay fast

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise UserError(f"--device: {device!r} is not a device (cpu, cuda, cuda:1, mps)") from None
    if remote:
        return
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: CUDA is not available on this machine "
                            "(use --device cpu, or --address to run on a cluster with GPUs)")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: this machine has {torch.cuda.device_count()} "
                            "CUDA device(s)")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {device}: MPS is not available on this machine")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device {device}: only cpu, cuda and mps devices are supported")


def check_output(uri: str, storage_options: dict | None = None) -> None:
    """The output is a folder (or does not exist yet) and, when local, can be written."""
    fs, root, _ = open_fs(uri, storage_options)
    shown = redact_uri(uri)
    if path_kind(uri, storage_options=storage_options) == "file":
        raise UserError(f"--output {shown} is a file; give a folder (new or a previous run's)")
    if not is_local_fs(fs):
        return
    path = Path(root)
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"--output {shown}: {existing} is a file, so the folder cannot be created")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--output {shown}: {existing} is not writable")


#: Inputs that are files naming images (manifests, Parquet of image bytes), not folders to list.
_FILE_INPUT_SUFFIXES = (".txt", ".csv", ".parquet")


def check_output_outside_input(input_uri: str, output_uri: str) -> None:
    """The output is not the input folder nor inside it: the next run would list labeler's own
    files (previews, exports) as new images. A manifest or Parquet input is a file, so an
    output beside it is fine."""
    if protocol_of(input_uri) != protocol_of(output_uri):
        return
    source, target = _comparable(input_uri), _comparable(output_uri)
    if source.lower().endswith(_FILE_INPUT_SUFFIXES) and not Path(source).is_dir():
        return
    if target == source or target.startswith(source.rstrip("/") + "/"):
        raise UserError(f"--output {redact_uri(output_uri)} is inside --input "
                        f"{redact_uri(input_uri)}: the next run would label labeler's own files; "
                        "write the output outside the image folder")


def _comparable(uri: str) -> str:
    """A URI as a path to compare: local paths resolved (``..``, links), others without their
    scheme and trailing slash."""
    if protocol_of(uri) == "file":
        return os.path.realpath(os.path.expanduser(uri.removeprefix("file://")))
    return uri.split("://", 1)[-1].rstrip("/")
