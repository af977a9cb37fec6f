"""The table of methods: the only place the rest of labeler learns which methods exist.

Each method package builds one :class:`~labeler.methods.spec.MethodSpec`; this module lists them.
Adding a method is one new package plus one entry in :data:`BUILTIN`, or one :func:`register`
call from a plug-in module named in ``LABELER_METHODS`` (comma-separated module names imported
when the registry is first used, by the driver and by every Ray worker).
"""

from __future__ import annotations

import importlib
import os

from labeler.errors import UserError
from labeler.methods.diffews.method import SPEC as DIFFEWS
from labeler.methods.diffseg.method import SPEC as DIFFSEG
from labeler.methods.slime.method import SPEC as SLIME
from labeler.methods.spec import MethodFlag, MethodSpec

#: The methods that ship with labeler, in ``--help`` order.
BUILTIN: tuple[MethodSpec, ...] = (DIFFSEG, SLIME, DIFFEWS)
#: The method of a job or an API call that names none.
DEFAULT_METHOD = DIFFSEG.name

#: Environment variable naming plug-in modules that call :func:`register` when imported.
PLUGINS_ENV = "LABELER_METHODS"

_METHODS: dict[str, MethodSpec] = {spec.name: spec for spec in BUILTIN}
_plugins_loaded = False


def register(spec: MethodSpec) -> MethodSpec:
    """Add a method to the table (idempotent for the same spec).

    Raises:
        ValueError: another method already has this name (a flag that clashes with a job setting
            is refused by :mod:`labeler.config` when a job names the method).
    """
    existing = _METHODS.get(spec.name)
    if existing is not None and existing != spec:
        raise ValueError(f"a method named {spec.name!r} is already registered")
    _METHODS[spec.name] = spec
    return spec


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for module in filter(None, (part.strip() for part in os.environ.get(PLUGINS_ENV, "").split(","))):
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise UserError(f"{PLUGINS_ENV}: cannot import method plug-in {module!r}: {error}") from None


def methods() -> dict[str, MethodSpec]:
    """Every registered method by name."""
    _load_plugins()
    return dict(_METHODS)


def get_method(name: str) -> MethodSpec:
    """The spec of ``name``.

    Raises:
        UserError: no such method.
    """
    known = methods()
    if name not in known:
        raise UserError(f"unknown method {name!r}: choose one of {', '.join(known)}")
    return known[name]


def method_flags() -> dict[str, tuple[MethodFlag, list[str]]]:
    """Every method flag by settings name, with the methods that take it (flags may be shared)."""
    flags: dict[str, tuple[MethodFlag, list[str]]] = {}
    for spec in methods().values():
        for flag in spec.flags:
            flags.setdefault(flag.name, (flag, []))[1].append(spec.name)
    return flags

