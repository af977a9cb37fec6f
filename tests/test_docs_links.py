"""The README and the docs pages link to files and sections that exist (relative links only)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md",
         ROOT / "infra" / "README.md"]
README_MAX_LINES = 250

_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = _FENCE.sub("", page.read_text())
    return {_anchor(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


def _relative_links(page: Path) -> list[str]:
    text = _FENCE.sub("", page.read_text())
    return [target for target in _LINK.findall(text) if not re.match(r"[a-z]+:", target)]


@pytest.mark.parametrize("page", [p for p in PAGES if p.exists()], ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    broken = []
    for target in _relative_links(page):
        path, _, anchor = target.partition("#")
        destination = (page.parent / path).resolve() if path else page
        if not destination.exists():
            broken.append(f"{target}: no such file")
        elif anchor and destination.suffix == ".md" and anchor not in _anchors(destination):
            broken.append(f"{target}: no such section")
    assert not broken, broken


def test_every_docs_page_is_reachable_from_the_readme():
    """A page linked by the README, or by a page the README reaches, can be found by a reader."""
    reached, todo = set(), [ROOT / "README.md"]
    while todo:
        page = todo.pop()
        for target in _relative_links(page):
            destination = (page.parent / target.partition("#")[0]).resolve()
            if destination.suffix == ".md" and destination.exists() and destination not in reached:
                reached.add(destination)
                todo.append(destination)
    missing = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if p.resolve() not in reached]
    assert not missing, f"docs pages no link reaches from the README: {missing}"


def test_readme_is_a_front_door():
    assert len((ROOT / "README.md").read_text().splitlines()) <= README_MAX_LINES


def test_anchor_follows_github_rules():
    assert _anchor(" `labeler status`") == "labeler-status"
    assert _anchor("DiffewS: cached vs uncached support (issue 10)") == "diffews-cached-vs-uncached-support-issue-10"
