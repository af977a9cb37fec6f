"""Planning: enumerate the collection once, cut it into shards, write the manifest.

Listing is streamed: shards are written as soon as they fill (a few at a time, concurrently, for
object stores), so memory stays bounded by a few shards whatever the collection size; the plan
itself keeps one small record per shard. Image ids are 1-based positions in the collection order;
shard ids are hashes of the shard's URIs (content, not position).
"""

from __future__ import annotations

import hashlib
import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from labeler.runtime.run_folder import RunFolder

logger = logging.getLogger(__name__)

#: Manifest files written concurrently while planning (object stores: one PUT each).
MANIFEST_WRITERS = 8


def shard_id_for(uris: list[str]) -> str:
    """16 hex chars from the shard's URIs, independent of where the shard sits in the plan."""
    digest = hashlib.sha256()
    for uri in uris:
        digest.update(uri.encode("utf-8", "surrogateescape"))
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def cut_into_shards(
    items: Iterable[dict], shard_size: int, name: Callable[[str, int], str] | None = None
) -> Iterator[list[dict]]:
    """Group input items (dicts with at least ``uri``) into shards of at most ``shard_size``.

    Each item gets its ``image_id``: its 1-based position in the collection, and, with ``name``
    (``(uri, image_id) -> file_name``, e.g. :class:`labeler.output.names.ImageNamer`), its
    ``file_name``.
    """
    shard: list[dict] = []
    for position, item in enumerate(items):
        entry = {**item, "image_id": position + 1}
        if name is not None:
            entry["file_name"] = name(entry["uri"], entry["image_id"])
        shard.append(entry)
        if len(shard) == shard_size:
            yield shard
            shard = []
    if shard:
        yield shard


def plan_run(
    run: RunFolder, items: Iterable[dict], shard_size: int,
    name: Callable[[str, int], str] | None = None,
) -> dict:
    """Write the manifest and plan unless a plan already exists (resume); return the plan.

    Args:
        items: the collection in order, one dict per image with at least ``uri``.
        name: ``(uri, image_id) -> file_name`` (see :func:`cut_into_shards`).
    """
    if run.has_plan():
        return run.read_plan()
    shards = []
    seen: set[str] = set()
    writes: deque[Future] = deque()
    writers = 1 if run.output.is_local else MANIFEST_WRITERS  # local disk: threads only add GIL
    with ThreadPoolExecutor(writers, thread_name_prefix="labeler-plan") as pool:
        for entries in cut_into_shards(items, shard_size, name):
            shard_id = shard_id_for([entry["uri"] for entry in entries])
            if shard_id in seen:  # a manifest that repeats a whole shard's URIs
                shard_id = shard_id_for([f"{entry['image_id']}:{entry['uri']}" for entry in entries])
            seen.add(shard_id)
            writes.append(pool.submit(run.write_manifest, shard_id, entries))
            while len(writes) > 2 * writers:  # bounded: a few shards in memory
                writes.popleft().result()
            shards.append(
                {"shard_id": shard_id, "n_images": len(entries),
                 "first_image_id": entries[0]["image_id"]}
            )
        for write in writes:
            write.result()
    if not shards:
        raise ValueError("the input holds no images")
    run.write_plan(shards)
    logger.info("planned %d images in %d shards", sum(s["n_images"] for s in shards), len(shards))
    return run.read_plan()
