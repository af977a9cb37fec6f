"""Hidden files and folders (a name part starting with '.') are skipped by a folder walk, and
counted with examples, so nothing is dropped without a trace."""

from __future__ import annotations

import time

import fsspec
import pytest

from labeler.io.listing import SkippedEntries, iter_inputs


def _populate(fs, root: str) -> None:
    for path in ("a.png", ".thumb.png", ".cache/b.png", "sub/..weird/c.png", "sub/d.png",
                 "notes.txt"):
        fs.makedirs(f"{root}/{path}".rsplit("/", 1)[0], exist_ok=True)
        fs.pipe_file(f"{root}/{path}", b"x")


@pytest.mark.parametrize("protocol", ["file", "memory"])
def test_hidden_entries_are_skipped_and_counted_with_examples(tmp_path, protocol):
    if protocol == "file":
        fs, root = fsspec.filesystem("file"), str(tmp_path / "photos")
        uri = root
    else:
        fs, root = fsspec.filesystem("memory"), f"/hidden-{time.monotonic_ns()}/photos"
        uri = f"memory://{root}"
    _populate(fs, root)
    skipped = SkippedEntries()
    names = [ref.uri.rsplit("/", 2)[-2:] for ref in iter_inputs(uri, skipped=skipped)]
    assert names == [["photos", "a.png"], ["sub", "d.png"]]
    assert skipped.count == 3  # .cache (once, its content unseen), .thumb.png, ..weird
    assert sorted(example.rsplit("/", 1)[-1] for example in skipped.examples) == \
        ["..weird", ".cache", ".thumb.png"]
    assert skipped.describe().startswith("3 hidden files or folders skipped")


def test_nothing_hidden_says_nothing():
    assert SkippedEntries().describe() == ""
