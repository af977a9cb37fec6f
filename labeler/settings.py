"""Typed settings tables: the base model of the job and of every method table.

Every table (the job's top level, ``[diffseg]``, ``[slime]``, ...) is a frozen pydantic model that
refuses unknown keys. :func:`parse_settings` validates a table and turns the first problem into
one line naming the setting, e.g. ``[diffseg] kl_threshold: must be > 0 (got -1)``.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from labeler.errors import UserError

S = TypeVar("S", bound="Settings")

_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<",
           "less_than_equal": "<="}
_KINDS = {"int": "an integer", "float": "a number", "bool": "true or false", "string": "a string",
          "dict": "a table", "tuple": "a list", "list": "a list"}


class Settings(BaseModel):
    """A settings table: frozen, unknown keys refused, booleans never taken for numbers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _no_coercion(cls, values: Any) -> Any:
        """Refuse what pydantic would coerce: a boolean for a number, a string for a non-string
        (``kl_threshold = "0.9"`` in a job file is a mistake to report, not a number to guess)."""
        if isinstance(values, Mapping):
            parsed = cls._parsed_fields()
            for name, value in values.items():
                field = cls.model_fields.get(name)
                if field is None:
                    continue
                if isinstance(value, bool) and not _admits(field.annotation, bool):
                    raise ValueError(f"{name}: must be {_expected(field.annotation)} (got {value!r})")
                if isinstance(value, str) and name not in parsed \
                        and not _admits(field.annotation, str):
                    raise ValueError(f"{name}: must be {_expected(field.annotation)} (got {value!r})")
        return values

    @classmethod
    def _parsed_fields(cls) -> set[str]:
        """Fields that parse a string themselves (a ``mode="before"`` field validator, e.g.
        DiffewS's comma-separated ``classes``): a string is their input, not a coercion."""
        return {name for validator in cls.__pydantic_decorators__.field_validators.values()
                if validator.info.mode == "before" for name in validator.info.fields}

    def to_dict(self) -> dict:
        """The settings as plain JSON-compatible values."""
        return self.model_dump(mode="json")


def parse_settings(model: type[S], values: Mapping[str, Any], table: str = "") -> S:
    """Validate ``values`` against ``model``.

    Args:
        table: the table's name for messages (``diffseg`` gives ``[diffseg] key: ...``).

    Raises:
        UserError: one line naming the first bad setting.
    """
    prefix = f"[{table}] " if table else ""
    unknown = sorted(set(values) - set(model.model_fields))
    if unknown:
        what = f"[{table}] settings" if table else "job settings"
        raise UserError(f"unknown {what}: {', '.join(unknown)} "
                        f"(known: {', '.join(sorted(model.model_fields))})")
    try:
        return model.model_validate(dict(values))
    except ValidationError as error:
        raise UserError(prefix + describe_error(error)) from None


def describe_error(error: ValidationError) -> str:
    """``key: what is wrong (got value)`` for the first error of a pydantic validation."""
    first = error.errors(include_url=False)[0]
    location = ".".join(str(part) for part in first["loc"])
    kind, context = first["type"], first.get("ctx") or {}
    if kind in _BOUNDS:
        bound = next(iter(context.values()))
        if isinstance(bound, float) and bound.is_integer():
            bound = int(bound)
        message = f"must be {_BOUNDS[kind]} {bound}"
    elif kind.endswith(("_parsing", "_type")) and kind.split("_")[0] in _KINDS:
        message = f"must be {_KINDS[kind.split('_')[0]]}"
    elif kind == "literal_error":
        message = f"must be {context.get('expected', 'one of the allowed values')}"
    elif kind == "missing":
        return f"{location}: required"
    elif kind in ("too_short", "too_long"):
        message = first["msg"].lower()
    else:
        message = first["msg"].removeprefix("Value error, ")
        if not location or ": must be" in message:  # the validator's message names the key
            return message
    if location.endswith(".[key]"):
        location = location.removesuffix(".[key]")
    got = first.get("input")
    return f"{location}: {message}" + ("" if isinstance(got, dict) else f" (got {got!r})")


def _admits(annotation: Any, kind: type) -> bool:
    """Whether a field of type ``annotation`` takes a value of type ``kind`` as it is."""
    if annotation is kind or annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return any(type(arg) is kind for arg in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType, typing.Annotated):
        return any(_admits(arg, kind) for arg in typing.get_args(annotation))
    return isinstance(annotation, type) and issubclass(kind, annotation) and annotation is not int


def _expected(annotation: Any) -> str:
    if annotation is int:
        return "an integer"
    if annotation is bool:
        return _KINDS["bool"]
    if typing.get_origin(annotation) in (tuple, list) or annotation in (tuple, list):
        return "a list"
    if typing.get_origin(annotation) is Literal:
        return "one of " + ", ".join(repr(arg) for arg in typing.get_args(annotation))
    return "a number" if annotation is float or "float" in str(annotation) else "a value"
