"""What a method tells the rest of labeler about itself: one :class:`MethodSpec`.

The job configuration, the command line, the API, doctor, the runtime and the run fingerprint
learn about methods only through these specs (see :mod:`labeler.methods.registry`). A method is
one package under ``labeler/methods/<name>/`` that builds one spec; it sees a job only through a
:class:`MethodContext` (its own settings and where to run), never the whole job configuration.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from labeler.methods.base import Segmenter
from labeler.settings import Settings


@dataclass(frozen=True)
class MethodContext:
    """What a method's build and checks see of a job.

    Attributes:
        settings: the method's table (an instance of its settings model).
        model: the model to load: the job's ``--model``, else the method's default; None when
            the method's resources name it (SLiMe: the embedding set's model).
        device: ``cuda``, ``cuda:1``, ``cpu``; None: cuda when available.
        dtype: ``auto``, ``float32``, ``float16`` or ``bfloat16``.
        seed: the job seed.
    """

    settings: Settings
    model: str | None
    device: str | None
    dtype: str
    seed: int


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


def _no_check(context: MethodContext) -> None:
    """Methods without resources of their own have nothing to check."""


def _all_settings(settings: Settings) -> dict:
    return settings.to_dict()


def _no_models(context: MethodContext) -> list[str]:
    return []


def _closed(settings: Settings) -> str | None:
    """Most methods know every category before they run."""
    return None


@dataclass(frozen=True)
class MethodSpec:
    """One method, as the registry table holds it.

    Attributes:
        name: ``--method NAME`` and the name of its job table (``[NAME]``).
        summary: one line for ``--help``.
        settings: the table's model (every knob, each default written once); the values of
            ``flags`` live in it too.
        build: ``build(context) -> Segmenter``, called once per worker (and by the API).
        categories: ``categories(settings) -> [{"id", "name", "supercategory"}, ...]`` without
            loading a model (the driver merges with them).
        open_categories: ``open_categories(settings) -> supercategory or None``: a string when
            the annotations may carry categories beyond ``categories`` (ids and names the method
            derives per image, e.g. DiffSeg's caption nouns): the merge then adds every category
            the annotations use, with that supercategory; None: the categories are closed.
        default_model: the model used when ``--model`` is not given, or None when the method's
            resources name it (SLiMe: the embedding set's model).
        check: ``check(context)``, pre-flight of method resources (files exist and parse, model
            compatible when cheaply knowable); raises :class:`labeler.errors.UserError`. Runs on
            the driver before the output is touched and before Ray starts.
        flags: settings exposed as ``labeler run`` flags and top-level job keys.
        fingerprint: ``fingerprint(settings) -> dict``, what of the table enters the run
            fingerprint (paths of resources are replaced by digests of their content). A key
            ending in ``_digest`` (:data:`labeler.config.DIGEST_SUFFIX`) is such a digest: a
            run recorded before the method added it resumes, warned, and records it.
        models: ``models(context) -> [model names]`` that pre-flight must resolve offline,
            beyond ``context.model`` (e.g. the model an embedding set names).
        commands: ``commands(subparsers)`` adds the method's own command to ``labeler`` (an
            argparse sub-parser whose ``func`` returns the exit status: ``labeler slime fit``,
            ``labeler diffews train``); None: it has none.
        settings_note: one line under the method's table in ``labeler run --help``.
    """

    name: str
    summary: str
    settings: type[Settings]
    build: Callable[[MethodContext], Segmenter]
    categories: Callable[[Settings], list[dict]]
    open_categories: Callable[[Settings], str | None] = _closed
    default_model: str | None = None
    check: Callable[[MethodContext], None] = _no_check
    flags: tuple[MethodFlag, ...] = ()
    fingerprint: Callable[[Settings], dict[str, Any]] = _all_settings
    models: Callable[[MethodContext], list[str]] = _no_models
    commands: Callable[[Any], object] | None = None
    settings_note: str = ""
