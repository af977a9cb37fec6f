"""What a method tells the rest of labeler about itself: one :class:`MethodSpec`.

The job configuration, the command line, the runtime and the run fingerprint learn about methods
only through these specs (see :mod:`labeler.methods.registry`). A method is one package under
``labeler/methods/<name>/`` that builds one spec.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from labeler.settings import Settings

if TYPE_CHECKING:
    from labeler.config import JobConfig
    from labeler.methods.base import Segmenter


@dataclass(frozen=True)
class MethodFlag:
    """A setting of the method's table that is also a ``labeler run`` flag and a top-level job key.

    Attributes:
        name: the settings field (``embeddings`` gives ``--embeddings``, ``support_images`` gives
            ``--support-images``).
        help: the flag's help text.
        metavar: how the help names the value (e.g. ``URI``).
        is_list: the flag takes a comma-separated list (``--names a,b``), the table a list.
    """

    name: str
    help: str
    metavar: str | None = None
    is_list: bool = False

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")


def _no_check(config: JobConfig) -> None:
    """Methods without resources of their own have nothing to check."""


def _all_settings(settings: Settings) -> dict:
    return settings.to_dict()


def _no_models(config: JobConfig) -> list[str]:
    return []


@dataclass(frozen=True)
class MethodSpec:
    """One method, as the registry table holds it.

    Attributes:
        name: ``--method NAME`` and the name of its job table (``[NAME]``).
        summary: one line for ``--help``.
        settings: the table's model (every knob, each default written once); the values of
            ``flags`` live in it too.
        build: ``build(config, device) -> Segmenter``, called once per worker; ``device`` None
            means ``config.device`` or the default device.
        categories: ``categories(config) -> [{"id", "name", "supercategory"}, ...]`` without
            loading a model (the driver merges with them).
        default_model: the model used when ``--model`` is not given, or None when the method's
            resources name it (SLiMe: the embedding set's model).
        check: pre-flight of method resources (files exist and parse, model compatible when
            cheaply knowable); raises :class:`labeler.errors.UserError`. Runs on the driver
            before the output is touched and before Ray starts.
        flags: settings exposed as ``labeler run`` flags and top-level job keys.
        fingerprint: ``fingerprint(settings) -> dict``, what of the table enters the run
            fingerprint (paths of resources are replaced by digests of their content).
        models: ``models(config) -> [model names]`` that pre-flight must resolve offline, beyond
            ``config.model_name`` (e.g. a component override such as a fine-tuned UNet).
    """

    name: str
    summary: str
    settings: type[Settings]
    build: Callable[[JobConfig, str | None], Segmenter]
    categories: Callable[[JobConfig], list[dict]]
    default_model: str | None = None
    check: Callable[[JobConfig], None] = _no_check
    flags: tuple[MethodFlag, ...] = ()
    fingerprint: Callable[[Settings], dict[str, Any]] = _all_settings
    models: Callable[[JobConfig], list[str]] = _no_models
