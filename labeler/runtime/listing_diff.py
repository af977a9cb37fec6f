"""The resume's listing diff in bounded memory: the listed items a plan does not hold yet, and the
plan's URIs the listing no longer has.

Both sides are spread over bucket files on local disk by a hash of the URI, so every occurrence
of a URI lands in the same bucket; each bucket is then diffed alone, its plan URIs counted in
memory. Memory is bounded by one bucket (``1 / buckets`` of the plan), not by the collection.
Each bucket keeps the listing order, so the new items come back in listing order through a heap
merge of the buckets (one line of each in memory).

Matching counts occurrences, as before: a URI planned twice and listed three times yields one
new item, the third listing of it.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

#: Plan URIs per bucket the diff aims at (a bucket's Counter then stays near 30 MB).
URIS_PER_BUCKET = 200_000
#: Removed URIs named in the resume report.
REMOVED_EXAMPLES = 5


@dataclass
class ListingDiff:
    """What :func:`diff_listing` found.

    Attributes:
        removed: plan URIs (occurrences) the listing no longer holds.
        removed_examples: the first of them in plan order.
    """

    removed: int = 0
    removed_examples: list[str] = field(default_factory=list)
    _buckets: list[str] = field(default_factory=list)

    def new_items(self) -> Iterator[dict]:
        """The listed items the plan does not hold, in listing order."""
        streams = [_positioned(path) for path in self._buckets]
        for _, item in heapq.merge(*streams, key=lambda pair: pair[0]):
            yield item


def diff_listing(plan_uris: Iterable[str], items: Iterable[dict], n_plan: int,
                 workdir: str) -> ListingDiff:
    """Diff ``items`` (the listing, dicts with ``uri``) against ``plan_uris`` (plan order).

    Args:
        plan_uris: every URI of the plan, in plan order (streamed).
        items: the current listing, in collection order (streamed).
        n_plan: how many URIs the plan holds (sets the number of buckets).
        workdir: an empty local folder for the bucket files (the caller removes it).
    """
    n_buckets = max(1, -(-n_plan // URIS_PER_BUCKET))
    planned = _spread(((uri, f"{position}\t{json.dumps(uri)}")
                       for position, uri in enumerate(plan_uris)),
                      n_buckets, os.path.join(workdir, "plan"))
    listed = _spread(((item["uri"], f"{position}\t{json.dumps(item)}")
                      for position, item in enumerate(items)),
                     n_buckets, os.path.join(workdir, "listing"))
    diff = ListingDiff()
    examples: list[tuple[int, str]] = []
    for bucket, (plan_path, listing_path) in enumerate(zip(planned, listed, strict=True)):
        known: Counter[str] = Counter()
        first_at: dict[str, int] = {}
        for position, text in _lines(plan_path):
            uri = json.loads(text)
            known[uri] += 1
            first_at.setdefault(uri, position)
        new_path = os.path.join(workdir, f"new-{bucket:05d}")
        with open(new_path, "w", encoding="utf-8") as new:
            for position, text in _lines(listing_path):
                uri = json.loads(text)["uri"]
                if known[uri] > 0:
                    known[uri] -= 1
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
