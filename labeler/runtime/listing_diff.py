"""The resume's listing diff in bounded memory: the listed items a plan does not hold yet, and the
plan's URIs the listing no longer has.

Both sides are spread over bucket files on local disk by a hash of the URI, so every occurrence
of a URI lands in the same bucket; each bucket is then diffed alone, its plan URIs counted in
memory. Memory is bounded by one bucket (``1 / buckets`` of the plan), not by the collection.
Each bucket keeps the listing order, so the new items come back in listing order through a heap
merge of the buckets (one line of each in memory).

Matching counts occurrences, as before: a URI planned twice and listed three times yields one
new item, the third listing of it.

Identities (:mod:`labeler.io.identity`): a plan entry may carry the identity recorded when its
image was read, and a listed item the identity the listing gives now; when both are known and of
one kind and differ, the image changed since it was labeled (:attr:`ListingDiff.changed`).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from labeler.io.identity import comparable

#: Plan URIs per bucket the diff aims at (a bucket's Counter then stays near 30 MB).
URIS_PER_BUCKET = 200_000
#: Removed URIs named in the resume report.
REMOVED_EXAMPLES = 5


class Planned(NamedTuple):
    """One image of the plan, as the diff sees it."""

    uri: str
    identity: str | None = None
    """The identity recorded when it was read (None: not read yet, or not compared)."""
    shard_id: str = ""


@dataclass
class ListingDiff:
    """What :func:`diff_listing` found.

    Attributes:
        removed: plan URIs (occurrences) the listing no longer holds.
        removed_examples: the first of them in plan order.
        changed: planned images whose listed identity differs from the recorded one.
        changed_shards: the shards holding them.
        changed_examples: the first of them in plan order, ``uri (recorded -> listed)``.
    """

    removed: int = 0
    removed_examples: list[str] = field(default_factory=list)
    changed: int = 0
    changed_shards: set[str] = field(default_factory=set)
    changed_examples: list[str] = field(default_factory=list)
    _buckets: list[str] = field(default_factory=list)

    def new_items(self) -> Iterator[dict]:
        """The listed items the plan does not hold, in listing order."""
        streams = [_positioned(path) for path in self._buckets]
        for _, item in heapq.merge(*streams, key=lambda pair: pair[0]):
            yield item


def diff_listing(planned: Iterable[Planned], items: Iterable[dict], n_plan: int,
                 workdir: str) -> ListingDiff:
    """Diff ``items`` (the listing, dicts with ``uri`` and maybe ``identity``) against
    ``planned`` (plan order).

    Args:
        planned: every image of the plan, in plan order (streamed).
        items: the current listing, in collection order (streamed).
        n_plan: how many URIs the plan holds (sets the number of buckets).
        workdir: an empty local folder for the bucket files (the caller removes it).
    """
    n_buckets = max(1, -(-n_plan // URIS_PER_BUCKET))
    plan_files = _spread(((entry.uri, f"{position}\t{json.dumps(list(entry))}")
                          for position, entry in enumerate(planned)),
                         n_buckets, os.path.join(workdir, "plan"))
    listed = _spread(((item["uri"], f"{position}\t{json.dumps(item)}")
                      for position, item in enumerate(items)),
                     n_buckets, os.path.join(workdir, "listing"))
    diff = ListingDiff()
    examples: list[tuple[int, str]] = []
    changed: list[tuple[int, str]] = []
    for bucket, (plan_path, listing_path) in enumerate(zip(plan_files, listed, strict=True)):
        known: Counter[str] = Counter()
        first_at: dict[str, int] = {}
        recorded: dict[str, list[tuple[int, str, str]]] = {}
        for position, text in _lines(plan_path):
            entry = Planned(*json.loads(text))
            known[entry.uri] += 1
            first_at.setdefault(entry.uri, position)
            if entry.identity is not None:
                recorded.setdefault(entry.uri, []).append(
                    (position, entry.identity, entry.shard_id))
        new_path = os.path.join(workdir, f"new-{bucket:05d}")
        with open(new_path, "w", encoding="utf-8") as new:
            for position, text in _lines(listing_path):
                item = json.loads(text)
                uri = item["uri"]
                if known[uri] > 0:
                    known[uri] -= 1
                    for at, identity, shard_id in recorded.pop(uri, ()):  # once per URI
                        current = item.get("identity")
                        if comparable(identity, current) and identity != current:
                            diff.changed += 1
                            diff.changed_shards.add(shard_id)
                            changed = heapq.nsmallest(
                                REMOVED_EXAMPLES, changed + [(at, f"{uri} ({identity} -> {current})")])
                else:
                    new.write(f"{position}\t{text}\n")
        os.remove(plan_path)
        os.remove(listing_path)
        diff._buckets.append(new_path)
        for uri, count in known.items():
            diff.removed += count
            if count:
                examples = heapq.nsmallest(REMOVED_EXAMPLES, examples + [(first_at[uri], uri)])
    diff.removed_examples = [uri for _, uri in examples]
    diff.changed_examples = [text for _, text in changed]
    return diff


def _spread(lines: Iterable[tuple[str, str]], n_buckets: int, prefix: str) -> list[str]:
    """Write each ``(uri, line)`` to the bucket of its URI; returns the bucket files."""
    paths = [f"{prefix}-{bucket:05d}" for bucket in range(n_buckets)]
    handles = [open(path, "w", encoding="utf-8") for path in paths]  # noqa: SIM115
    try:
        for uri, line in lines:
            bucket = int.from_bytes(hashlib.blake2b(uri.encode("utf-8", "surrogateescape"),
                                                    digest_size=4).digest()) % n_buckets
            handles[bucket].write(line + "\n")  # JSON text: no raw newline inside
    finally:
        for handle in handles:
            handle.close()
    return paths


def _lines(path: str) -> Iterator[tuple[int, str]]:
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            position, _, text = line.rstrip("\n").partition("\t")
            yield int(position), text


def _positioned(path: str) -> Iterator[tuple[int, dict]]:
    for position, text in _lines(path):
        yield position, json.loads(text)
