"""``labeler doctor``: what this machine offers a labeling job, checked offline in seconds.

Sections: versions (python, labeler, torch and its CUDA build, ray, diffusers, transformers),
GPUs (what torch sees, ``CUDA_VISIBLE_DEVICES``), cache folders (``LABELER_CACHE``, the Hugging
Face cache) with their free space, whether a model can be loaded without downloading, and which
storage credentials are configured. Credentials are reported by name only (an environment
variable is set, a config file exists), never by value. Nothing touches the network: Ray is not
started, the hub is not asked, object storage is not listed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from huggingface_hub import constants as hf_constants
from huggingface_hub import snapshot_download
from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

from labeler import __version__
from labeler.methods.registry import DEFAULT_METHOD, get_method

#: Distributions whose versions are reported (looked up in the installed metadata, not imported).
PACKAGES = ("torch", "ray", "diffusers", "transformers", "huggingface-hub", "fsspec", "s3fs", "gcsfs")

#: Storage credentials: (scheme, environment variables, config files) looked for, names only.
CREDENTIALS = (
    ("s3", ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
            "AWS_ENDPOINT_URL", "AWS_SHARED_CREDENTIALS_FILE"),
     ("~/.aws/credentials", "~/.aws/config")),
    ("gs", ("GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT"),
     ("~/.config/gcloud/application_default_credentials.json",)),
)


@dataclass
class Section:
    """One block of the report: a title and ``(label, text)`` lines."""

    title: str
    lines: list[tuple[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    """What would stop a job (the command exits 1 when any section has one)."""

    def add(self, label: str, text: str) -> None:
        """Append one ``label  text`` line."""
        self.lines.append((label, text))


def labeler_cache() -> Path:
    """The folder where remote models are copied (``LABELER_CACHE``, else ``~/.cache/labeler``)."""
    return Path(os.environ.get("LABELER_CACHE", Path.home() / ".cache" / "labeler"))


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def versions() -> Section:
    import torch  # imported when the command runs, so every other command starts fast

    """Python, labeler and the libraries a job uses."""
    section = Section("versions")
    section.add("python", f"{platform.python_version()} ({sys.executable})")
    section.add("labeler", __version__)
    for name in PACKAGES:
        text = _version(name)
        if name == "torch":
            text += f" (CUDA build {torch.version.cuda})" if torch.version.cuda else " (CPU build)"
        section.add(name, text)
    return section


def gpus() -> Section:
    import torch  # imported when the command runs (see versions)

    """The GPUs torch can use here."""
    section = Section("gpu")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    section.add("CUDA_VISIBLE_DEVICES", "unset" if visible is None else repr(visible))
    if not torch.cuda.is_available():
        why = "torch was built without CUDA" if not torch.version.cuda else "no GPU visible"
        section.add("cuda", f"not available ({why}): jobs run on the CPU")
        return section
    count = torch.cuda.device_count()
    section.add("cuda", f"{count} device(s), torch built for CUDA {torch.version.cuda}")
    for index in range(count):
        props = torch.cuda.get_device_properties(index)
        section.add(f"cuda:{index}", f"{props.name}, {props.total_memory / 2**30:.1f} GiB, "
                              f"capability {props.major}.{props.minor}")
    return section


def _free_space(path: Path) -> str:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free / 2**30
    state = "exists" if path.exists() else "not created yet"
    return f"{path} ({state}; {free:.1f} GiB free)"


def caches() -> Section:
    """Where models are cached, and the free space there."""
    section = Section("cache")
    source = "LABELER_CACHE" if "LABELER_CACHE" in os.environ else "default"
    section.add(f"labeler ({source})", _free_space(labeler_cache()))
    hf_source = next((v for v in ("HF_HUB_CACHE", "HF_HOME") if v in os.environ), "default")
    section.add(f"hugging face ({hf_source})", _free_space(Path(hf_constants.HF_HUB_CACHE)))
    section.add("offline", "HF_HUB_OFFLINE set" if hf_constants.HF_HUB_OFFLINE
                          else "HF_HUB_OFFLINE unset (missing hub models are downloaded)")
    return section


def model(name: str) -> Section:
    """Whether ``name`` loads without a download (cache lookups only, no network)."""
    section = Section(f"model {name}")
    if name == "tiny":
        section.add("found", "built in (random weights, offline)")
        return section
    if "://" in name and not name.startswith("file://"):
        copy = labeler_cache() / "models" / hashlib.sha256(name.encode()).hexdigest()[:16]
        if (copy / ".complete").exists():
            section.add("found", f"copied in the cache at {copy}")
        else:
            section.add("remote", "not copied yet: the first job copies it into the "
                                            "cache (storage not contacted now)")
        return section
    local = Path(name.removeprefix("file://")).expanduser()
    if local.exists():
        if (local / "unet").is_dir():
            section.add("found", f"diffusers directory {local}")
        else:
            section.problems.append(f"{local} is not a diffusers model directory (no unet/)")
        return section
    try:
        snapshot = snapshot_download(name, local_files_only=True)
    except (LocalEntryNotFoundError, HFValidationError, OSError, ValueError):
        snapshot = None
    if snapshot is not None:
        section.add("found", f"in the Hugging Face cache at {snapshot}")
    elif hf_constants.HF_HUB_OFFLINE or name.startswith((".", "/", "~")):
        section.problems.append(f"{name} is neither a directory nor in the Hugging Face cache")
    else:
        section.add("download", f"not in the cache: the first job downloads it "
                                          f"(or run `hf download {name}` now)")
    return section


def credentials() -> Section:
    """Storage credentials configured for s3:// and gs:// (names only, never values)."""
    section = Section("storage credentials")
    for scheme, variables, files in CREDENTIALS:
        found = [f"env {v}" for v in variables if os.environ.get(v)]
        found += [f"file {f}" for f in files if Path(f).expanduser().is_file()]
        text = ", ".join(found) if found else "none found (public buckets or instance roles only)"
        section.add(f"{scheme}://", text)
    return section


def diagnose(model_name: str) -> list[Section]:
    """Every section of the report, for a job using ``model_name``."""
    return [versions(), gpus(), caches(), model(model_name), credentials()]


def render(sections: list[Section]) -> str:
    """The report as text: one block per section, problems marked ``PROBLEM``."""
    out = []
    for section in sections:
        out.append(section.title)
        width = max((len(label) for label, _ in section.lines), default=0)
        out += [f"  {label.ljust(width)}  {text}" for label, text in section.lines]
        out += [f"  PROBLEM: {problem}" for problem in section.problems]
    return "\n".join(out)


def add_parser(commands) -> None:
    """Register ``labeler doctor``."""
    doctor = commands.add_parser(
        "doctor", help="check this machine: versions, GPUs, caches, a model, storage credentials",
        description=__doc__.split("\n\n")[0].removeprefix("``labeler doctor``: "),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    doctor.add_argument("--model", default=get_method(DEFAULT_METHOD).default_model,
                        help="model to look up: tiny, a Hugging Face id or a diffusers directory "
                             f"(the default: {DEFAULT_METHOD}'s)")
    doctor.set_defaults(func=_doctor)


def _doctor(args: argparse.Namespace) -> int:
    sections = diagnose(args.model)
    sys.stdout.write(render(sections) + "\n")
    return 1 if any(section.problems for section in sections) else 0
