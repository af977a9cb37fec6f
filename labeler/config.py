"""Job configuration: one dataclass shared by the TOML job file and the command-line flags.

A job file holds the same keys as the ``labeler run`` flags (top level) plus one table per method
(``[diffseg]``, ``[slime]``). Flags override the file. The fingerprint covers every setting that
changes the output, so a resumed run can refuse a changed configuration and say what changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

METHODS = ("diffseg", "slime")
DEFAULT_DIFFSEG_MODEL = "CompVis/stable-diffusion-v1-4"


@dataclass(frozen=True)
class DiffSegSettings:
    """DiffSeg knobs (reference defaults; see ``labeler.methods.diffseg``)."""

    kl_threshold: float = 1.1
    iterations: int = 3
    grid_points: int = 16
    weights: dict[int, float] | None = None
    timestep: int = 300
    max_label_side: int = 1024
    antialias: bool = True


@dataclass(frozen=True)
class SlimeSettings:
    """SLiMe inference knobs; the rest comes from the embedding set."""

    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class JobConfig:
    """Everything ``labeler run`` needs. Scale knobs do not enter the fingerprint."""

    input: str
    output: str
    method: str = "diffseg"
    model: str | None = None
    embeddings: str | None = None
    seed: int = 0
    shard_size: int = 256
    max_pixels: int | None = None
    dtype: str = "auto"
    diffseg: DiffSegSettings = field(default_factory=DiffSegSettings)
    slime: SlimeSettings = field(default_factory=SlimeSettings)
    # scale and placement: may change between a run and its resume
    address: str | None = None
    workers: int | None = None
    gpus_per_worker: float | None = None
    cpus_per_worker: int | None = None
    batch_size: int = 4
    device: str | None = None
    overwrite: bool = False

    SCALE_KEYS = ("address", "workers", "gpus_per_worker", "cpus_per_worker", "batch_size",
                  "device", "overwrite")

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.method == "slime" and not self.embeddings:
            raise ValueError("--method slime needs --embeddings SET.safetensors")
        for name in ("shard_size", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")

    @property
    def model_name(self) -> str:
        """The model to load: explicit, else the method's default (SLiMe: from the set)."""
        if self.model:
            return self.model
        return DEFAULT_DIFFSEG_MODEL if self.method == "diffseg" else ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def output_settings(self) -> dict:
        """The settings that change the output (what the fingerprint covers)."""
        settings = {k: v for k, v in self.to_dict().items() if k not in self.SCALE_KEYS}
        settings.pop("output")
        settings[self.method] = settings.pop(self.method)
        settings.pop("slime" if self.method == "diffseg" else "diffseg")
        settings["model"] = self.model_name or None
        return json.loads(json.dumps(settings, sort_keys=True, default=str))

    def fingerprint(self) -> str:
        blob = json.dumps(self.output_settings(), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def settings_difference(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Human-readable lines for every key whose value differs between two settings dicts."""
    lines = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key), new.get(key)
        if isinstance(before, dict) and isinstance(after, dict):
            lines += settings_difference(before, after, f"{prefix}{key}.")
        elif before != after:
            lines.append(f"{prefix}{key}: {before!r} -> {after!r}")
    return lines


def load_job_file(path: str | Path) -> dict:
    """Read a TOML job file into a flat dict of ``JobConfig`` keyword arguments."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError as error:
        raise ValueError(f"job file {path} does not exist") from error
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"job file {path} is not valid TOML: {error}") from error
    return data


def build_config(file_values: dict, overrides: dict) -> JobConfig:
    """Merge job-file values with flag overrides (flags that were set win) into a config."""
    values = {**file_values, **{k: v for k, v in overrides.items() if v is not None}}
    known = {f.name for f in dataclasses.fields(JobConfig)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown job settings: {', '.join(sorted(unknown))}")
    for required in ("input", "output"):
        if not values.get(required):
            raise ValueError(f"--{required} is required (as a flag or in the job file)")
    diffseg = values.get("diffseg") or {}
    if isinstance(diffseg, dict):
        fields = {f.name for f in dataclasses.fields(DiffSegSettings)}
        bad = set(diffseg) - fields
        if bad:
            raise ValueError(f"unknown [diffseg] settings: {', '.join(sorted(bad))}")
        if diffseg.get("weights"):
            diffseg = {**diffseg, "weights": {int(k): float(v) for k, v in diffseg["weights"].items()}}
        values["diffseg"] = DiffSegSettings(**diffseg)
    slime = values.get("slime") or {}
    if isinstance(slime, dict):
        values["slime"] = SlimeSettings(options=dict(slime))
    return JobConfig(**values)
