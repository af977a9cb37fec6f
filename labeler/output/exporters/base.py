"""The exporter interface: a named format written from the rows of an output.

An exporter reads everything it needs from an :class:`~labeler.output.reader.OutputReader`
(image rows, annotation rows, categories, info), streaming, and writes its files under an output
folder. Adding a format is one module implementing :class:`Exporter` plus one entry in
:mod:`labeler.output.exporters.registry`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from labeler.io.storage import Folder
from labeler.output.reader import OutputReader


class ExportOptionError(ValueError):
    """An option the format does not know, or a value it cannot use."""


class Exporter(Protocol):
    """One export format.

    Attributes:
        name: the format's name on the command line (``labeler export --format NAME``).
        description: one line for ``labeler export --help``.
    """

    name: str
    description: str

    def write(self, reader: OutputReader, out: Folder, options: Mapping[str, Any]) -> list[str]:
        """Write the format under ``out``; returns the written paths relative to ``out``.

        Raises:
            ExportOptionError: ``options`` holds a key or value the format refuses (raised
                before anything is written).
        """
        ...


def refuse_unknown_options(exporter: Exporter, options: Mapping[str, Any], known: set[str]) -> None:
    """Raise :class:`ExportOptionError` naming the first option ``exporter`` does not know."""
    for key in options:
        if key not in known:
            allowed = ", ".join(sorted(known)) or "none"
            raise ExportOptionError(f"format {exporter.name} has no option {key!r} (options: {allowed})")
