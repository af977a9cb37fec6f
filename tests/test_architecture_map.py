"""docs/architecture.md names every module under labeler/, in the right package.

The map is the code block that starts with ``labeler/``. An entry line starts at an indent of
2 per package depth with its names (``cli.py``, ``io/``, ``eval/, preview/``, several files
separated by commas), then a description; lines indented to the description column continue
the entry above. A module is named when its package's map lists ``name.py`` as an entry, or the
package's own entry mentions ``name.py`` or ``name`` in its description (``io/  ... uris,
retry, ...``). ``__init__.py`` files are not listed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
#: Where descriptions start; a deeper line continues the entry above it.
DESCRIPTION_COLUMN = 20


@dataclass
class Entry:
    """One entry of the map: the package it is in, its names, and its text."""

    package: tuple[str, ...]
    names: list[str]
    text: list[str] = field(default_factory=list)


def map_lines(doc: str) -> list[str]:
    """The lines of the code block that starts with ``labeler/``."""
    blocks = re.findall(r"```\n(labeler/\n.*?)```", doc, flags=re.DOTALL)
    assert blocks, "docs/architecture.md has no code block starting with labeler/"
    return blocks[0].splitlines()[1:]


def parse_map(lines: list[str]) -> list[Entry]:
    entries: list[Entry] = []
    packages: list[str] = []  # the open package at each depth
    for line in lines:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        if indent >= DESCRIPTION_COLUMN and entries:
            entries[-1].text.append(line.strip())
            continue
        depth = indent // 2 - 1
        head, _, description = line.strip().partition("  ")
        names = [name.strip() for name in head.split(",") if name.strip()]
        del packages[depth:]
        entry = Entry(tuple(packages), names, [description.strip()])
        entries.append(entry)
        subpackages = [name for name in names if name.endswith("/")]
        if len(subpackages) == 1:
            packages.append(subpackages[0].rstrip("/"))
    return entries


def named_modules(entries: list[Entry]) -> set[tuple[str, ...]]:
    """Module paths (package parts + module name, no ``.py``) the map names."""
    named: set[tuple[str, ...]] = set()
    for entry in entries:
        for name in entry.names:
            if name.endswith(".py"):
                named.add((*entry.package, name.removesuffix(".py")))
            elif name.endswith("/"):
                package = (*entry.package, name.rstrip("/"))
                named.add(package)
                for word in re.findall(r"[A-Za-z_][A-Za-z0-9_]*(?:\.py)?", " ".join(entry.text)):
                    named.add((*package, word.removesuffix(".py")))
    return named


def modules() -> list[tuple[str, ...]]:
    """Every module under labeler/ (package parts + name), ``__init__`` left out."""
    found = []
    for path in sorted((ROOT / "labeler").rglob("*.py")):
        parts = path.relative_to(ROOT / "labeler").with_suffix("").parts
        if parts[-1] != "__init__":
            found.append(parts)
    return found


def test_every_module_is_named_in_docs_architecture_md():
    named = named_modules(parse_map(map_lines(DOC.read_text())))
    missing = ["labeler/" + "/".join(parts) + ".py" for parts in modules() if parts not in named]
    assert not missing, "docs/architecture.md does not name: " + ", ".join(missing)


def test_the_check_places_names_in_their_package():
    lines = [
        "  cli.py            the command line",
        "  io/               storage: uris, retry",
        "    decode.py       the one decoder",
        "  methods/          methods",
        "    base.py, spec.py  the seam",
        "    slime/          algorithm.py, fit.py,",
        "                    command.py (`labeler slime`)",
        "  eval/, preview/   commands",
    ]
    named = named_modules(parse_map(lines))
    for module in [("cli",), ("io", "uris"), ("io", "retry"), ("io", "decode"),
                   ("methods", "base"), ("methods", "spec"), ("methods", "slime", "command")]:
        assert module in named, module
    assert ("slime", "command") not in named and ("methods", "command") not in named
    assert ("decode",) not in named and ("eval",) in named and ("preview",) in named
