"""Job configuration: one typed model shared by the TOML job file and the command-line flags.

A job file holds the same keys as the ``labeler run`` flags (top level) plus the table of its
method (``[diffseg]``, ``[slime]``, ...); flags override the file. Methods come from the registry
(:mod:`labeler.methods.registry`): the chosen method's table is validated by its own settings
model, a method's own flags (``--embeddings``) land in that table, and a table for another method
is refused. Every problem is one :class:`~labeler.errors.UserError` line naming the setting.

The fingerprint covers every setting that changes the output, so a resumed run can refuse a
changed configuration and say what changed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import tomllib
from pydantic import Field, SerializeAsAny, StringConstraints, ValidationError, model_validator

from labeler.errors import UserError
from labeler.io.uris import InputError, refuse_uri_credentials
from labeler.methods.base import Segmenter, decode_side
from labeler.methods.registry import DEFAULT_METHOD, get_method, method_flags, methods
from labeler.methods.spec import MethodContext, MethodSpec
from labeler.models.fingerprint import named_weights_digest
from labeler.settings import Settings, describe_error, parse_settings

#: A protocol name for ``allow_protocols``: ``s3``, ``https``, ``file``, ...
_PROTOCOL = r"^[a-z][a-z0-9+.\-]*$"


class JobConfig(Settings):
    """Everything ``labeler run`` needs. Scale knobs do not enter the fingerprint.

    Attributes:
        settings: the chosen method's table (its settings model), method flags included.
    """

    input: str = Field(min_length=1)
    output: str = Field(min_length=1)
    method: str = DEFAULT_METHOD
    model: str | None = None
    seed: int = 0
    shard_size: int = Field(256, ge=1)
    max_pixels: int | None = Field(None, ge=1)
    draft_decode: bool = Field(True, strict=True)
    """Decode each image only as large as the method needs: reduced (a JPEG by libjpeg's DCT
    scaling, other formats by an integer box reduce) by the largest factor that keeps both sides
    >= the method's input side (:func:`labeler.methods.base.decode_side`); labels stay at the
    stored size and ``images.parquet`` records the factor (``decode_scale``). The methods'
    parity modes decode at full size whatever this says."""
    allow_protocols: tuple[Annotated[str, StringConstraints(pattern=_PROTOCOL)], ...] | None = None
    """Protocols the workers may read (see :mod:`labeler.io.policy`); None: the input's own."""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    settings: SerializeAsAny[Settings]
    # scale and placement: may change between a run and its resume
    executor: Literal["ray", "local"] = "ray"
    """Where shards run: Ray workers (a local instance, or the cluster at ``address``), or this
    process (``local``: no Ray; one machine, the same commit protocol and retries)."""
    address: str | None = None
    workers: int | None = Field(None, ge=1)
    gpus_per_worker: float | None = Field(None, ge=0)
    cpus_per_worker: int | None = Field(None, ge=1)
    batch_size: int = Field(4, ge=1)
    device: str | None = None
    coco_max_annotations: int | None = Field(None, ge=1)
    """Above this many annotations the COCO output is split (``coco/part-NNNNN.json``); None:
    the output format's bound (:data:`labeler.output.coco_files.DEFAULT_MAX_ANNOTATIONS`)."""
    overwrite: bool = False
    stall_timeout: float = Field(900.0, gt=0)
    """Seconds a busy worker may go without a sign of life (an image read, a batch labeled)
    before it is declared lost, killed and replaced, its shards requeued
    (:mod:`labeler.runtime.liveness`; Ray workers). The default is generous for GPU work (a model
    that compiles on its first batch, a slow read retried with backoff)."""
    # how this driver treats the output: never part of the fingerprint either
    wait_lock: bool = False
    """Wait for another driver's lease on the output instead of refusing: until it is released
    or its renewals stop (:mod:`labeler.runtime.lease`)."""
    retry_failed: bool = True
    """Redo the shards holding failures that may heal (storage errors, out of memory)."""
    strict: bool = False
    """Any failed image makes the run's exit status non-zero."""
    verify_inputs: bool | None = None
    """On a re-run, relabel the images whose identity (ETag, mtime and size, digest:
    :mod:`labeler.io.identity`) changed since they were labeled. None (the default): for a
    folder input, whose listing gives identities for free (on S3 and local disks); True: for
    every input, with a HEAD or stat per manifest entry, or its bytes (HTTP, Parquet rows);
    False: never."""

    SCALE_KEYS: ClassVar[tuple[str, ...]] = (
        "executor", "address", "workers", "gpus_per_worker", "cpus_per_worker", "batch_size",
        "device", "coco_max_annotations", "overwrite", "stall_timeout", "wait_lock",
        "retry_failed", "strict", "verify_inputs",
    )

    def __init__(self, **values: Any) -> None:
        refuse_credentials(values)
        try:
            super().__init__(**values)
        except ValidationError as error:
            raise UserError(describe_error(error)) from None

    @model_validator(mode="before")
    @classmethod
    def _method_table(cls, values: Any) -> Any:
        return route_method_settings(values) if isinstance(values, Mapping) else values

    @model_validator(mode="after")
    def _ray_settings_need_ray(self) -> JobConfig:
        if self.executor == "local":
            for name in ("address", "gpus_per_worker"):
                if getattr(self, name) is not None:
                    option = "--" + name.replace("_", "-")
                    raise ValueError(f"{option} places Ray workers; --executor local runs in this "
                                     f"process (leave {option} out, or use --executor ray)")
        return self

    @property
    def spec(self) -> MethodSpec:
        """The chosen method's registry entry."""
        return get_method(self.method)

    @property
    def model_name(self) -> str:
        """The model to load: explicit, else the method's default ("" when its resources name it)."""
        return self.model or self.spec.default_model or ""

    def method_context(self, device: str | None = None) -> MethodContext:
        """What the method sees of this job (``device`` overrides the job's)."""
        return MethodContext(settings=self.settings, model=self.model_name or None,
                             device=device or self.device, dtype=self.dtype, seed=self.seed)

    def build_segmenter(self, device: str | None = None) -> Segmenter:
        """Load the model and the method once (a worker calls this at start-up)."""
        return self.spec.build(self.method_context(device))

    def decode_side_for(self, segmenter: Segmenter) -> int | None:
        """The side this job's images are decoded down to for ``segmenter``: its input side
        with ``draft_decode`` (None in its parity modes), else None (full size)."""
        return decode_side(segmenter) if self.draft_decode else None

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    def output_settings(self) -> dict:
        """The settings that change the output (what the fingerprint covers)."""
        settings = self.model_dump(mode="json", exclude={*self.SCALE_KEYS, "output", "settings"})
        settings["model"] = self.model_name or None
        digest = self.model_name and named_weights_digest(self.model_name, "model")
        if digest:  # a model folder: its weights, so one rewritten in place is another run
            settings["model_digest"] = digest  # (tiny and hub ids by name: as before)
        if self.allow_protocols is None:  # the default policy: fingerprints of older runs stand
            del settings["allow_protocols"]
        if self.draft_decode:  # the default: fingerprints of older runs stand (their images
            del settings["draft_decode"]  # labeled before have a null decode_scale)
        settings[self.method] = self.spec.fingerprint(self.settings)
        return json.loads(json.dumps(settings, sort_keys=True, default=str))

    def fingerprint(self) -> str:
        return settings_fingerprint(self.output_settings())


def settings_fingerprint(settings: Mapping) -> str:
    """16 hex digits over :meth:`JobConfig.output_settings`: a new run's id."""
    blob = json.dumps(settings, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def refuse_credentials(values: Mapping[str, Any]) -> None:
    """Refuse any URI setting with credentials in it (they would reach ``run/config.json``,
    messages, and workers that cannot use them): one line naming the setting, secret redacted.

    Raises:
        UserError: a setting holds ``scheme://user:secret@...``.
    """
    if isinstance(values, Settings):
        values = values.model_dump()
    for name, value in values.items():
        where = f"--{name.replace('_', '-')}"
        if isinstance(value, str) and "://" in value:
            try:
                refuse_uri_credentials(value, where)
            except InputError as error:
                raise UserError(str(error)) from None
        elif isinstance(value, (Mapping, Settings)):
            refuse_credentials(value)  # a method's table: its URIs are flags too


def route_method_settings(values: Mapping[str, Any]) -> dict[str, Any]:
    """Move the method's table and its flags into ``settings``, validated by the method's model.

    Raises:
        UserError: unknown method, a table or flag of another method, a bad method setting.
    """
    values = dict(values)
    method = values.get("method", DEFAULT_METHOD)
    if not isinstance(method, str):
        raise UserError(f"method: must be a method name (got {method!r})")
    spec = get_method(method)
    clashes = {flag.name for flag in spec.flags} & set(JobConfig.model_fields)
    if clashes:
        raise ValueError(f"method {spec.name} flags clash with job settings: {sorted(clashes)}")
    for other in methods():
        if other != spec.name and other in values:
            raise UserError(f"[{other}] table given, but this job's method is {spec.name} "
                            f"(remove the table or use --method {other})")
    own = {flag.name for flag in spec.flags}
    for name, (flag, takers) in method_flags().items():
        if name not in own and values.get(name) is not None:
            raise UserError(f"{flag.option} is a setting of --method {' or '.join(takers)}, "
                            f"not of {spec.name}")
    table = values.pop(spec.name, None)
    if isinstance(values.get("settings"), spec.settings) and table is None:
        return values
    if table is None:
        table = {}
    if not isinstance(table, Mapping):
        raise UserError(f"[{spec.name}] must be a table of settings (got {table!r})")
    table = dict(table)
    for name in own:
        given = values.pop(name, None)
        if given is not None:
            table[name] = given
    for flag in spec.flags:
        field = spec.settings.model_fields.get(flag.name)
        if flag.name not in table and field is not None and field.is_required():
            raise UserError(f"--method {spec.name} needs {flag.option}"
                            + (f" {flag.metavar}" if flag.metavar else ""))
    values["settings"] = parse_settings(spec.settings, table, spec.name)
    return values


def settings_difference(old: dict, new: dict) -> list[str]:
    """Human-readable lines for every key whose value differs between two settings dicts."""
    return [_line(*difference) for difference in _differences(old, new)]


_ABSENT = object()


def _differences(old: Mapping, new: Mapping, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, value in ``old``, value in ``new``) for every differing leaf; a key missing
    from one side has ``_ABSENT`` there."""
    found = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key, _ABSENT), new.get(key, _ABSENT)
        if isinstance(before, Mapping) and isinstance(after, Mapping):
            found += _differences(before, after, f"{prefix}{key}.")
        elif before != after:
            found.append((f"{prefix}{key}", before, after))
    return found


#: Keys ending so are content digests of what a setting names (the model's weights, a method's
#: resource): a run recorded before one entered the fingerprint lacks it, and still resumes.
DIGEST_SUFFIX = "_digest"


def recorded_changes(recorded: Mapping, settings: Mapping) -> tuple[list[str], list[str]]:
    """What a run's recorded settings (``run/config.json``) say against ``settings`` now.

    Returns:
        The lines of :func:`settings_difference` for what changed (a changed run: refused),
        and the digest keys (``model_digest``, ``diffseg.captioner_digest``) that ``settings``
        has and the record lacks, recorded before they entered the fingerprint (not a change:
        the run resumes and records them).
    """
    changes, unrecorded = [], []
    for key, before, after in _differences(recorded, settings):
        if before is _ABSENT and key.endswith(DIGEST_SUFFIX):
            unrecorded.append(key)
        else:
            changes.append(_line(key, before, after))
    return changes, unrecorded


def _line(key: str, before: Any, after: Any) -> str:
    """``key: before -> after``, a missing value shown as None."""
    shown = [None if value is _ABSENT else value for value in (before, after)]
    return f"{key}: {shown[0]!r} -> {shown[1]!r}"


def load_job_file(path: str | Path) -> dict:
    """Read a TOML job file into a dict of job settings (top-level keys and method tables)."""
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"job file {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"job file {path} is a directory") from None
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"job file {path} is not valid TOML: {error}") from None


def build_config(file_values: dict, overrides: dict) -> JobConfig:
    """Merge job-file values with flag overrides (flags that were set win) into a config.

    Raises:
        UserError: one line naming the first bad setting.
    """
    values = {**file_values, **{k: v for k, v in overrides.items() if v is not None}}
    known = set(JobConfig.model_fields) - {"settings"}
    known |= set(methods()) | set(method_flags())
    unknown = set(values) - known
    if unknown:
        raise UserError(f"unknown job settings: {', '.join(sorted(unknown))} "
                        f"(known: {', '.join(sorted(known))})")
    for required in ("input", "output"):
        if not values.get(required):
            raise UserError(f"--{required} is required (as a flag or in the job file)")
    return JobConfig(**route_method_settings(values))
