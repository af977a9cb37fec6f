"""Planning: enumerate the collection, cut it into shards, write the manifest.

Listing is streamed: shards are written as soon as they fill (a few at a time, concurrently, for
object stores), so memory stays bounded by a few shards whatever the collection size; the plan
itself keeps one small record per shard. Image ids are 1-based positions in the collection order;
shard ids are hashes of the shard's URIs (content, not position).

On resume the input is listed again (:func:`extend_plan`): images it did not hold before are
appended as new shards, with ids after the existing ones, in collection order; the existing
shards, their ids and their manifests are left as they are, and images no longer listed are
reported, not removed. The diff of the listing against the plan runs through bucket files on
local disk (:mod:`labeler.runtime.listing_diff`): memory stays bounded there too. The same pass
compares, for the shards asked, the identity each image had when it was read (its image part's
``input_identity``) with the identity the listing gives now: images that changed since they were
labeled are reported with their shards (``verify_inputs``, :mod:`labeler.io.identity`).
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from labeler.errors import UserError
from labeler.output import parts
from labeler.runtime.listing_diff import Planned, diff_listing
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
    items: Iterable[dict], shard_size: int, name: Callable[[str, int], str] | None = None,
    first_image_id: int = 1,
) -> Iterator[list[dict]]:
    """Group input items (dicts with at least ``uri``) into shards of at most ``shard_size``.

    Each item gets its ``image_id``: its 1-based position in the collection (counted from
    ``first_image_id``), and, with ``name`` (``(uri, image_id) -> file_name``, e.g.
    :class:`labeler.output.names.ImageNamer`), its ``file_name``.
    """
    shard: list[dict] = []
    for position, item in enumerate(items):
        entry = {**item, "image_id": first_image_id + position}
        if name is not None:
            entry["file_name"] = name(entry["uri"], entry["image_id"])
        shard.append(entry)
        if len(shard) == shard_size:
            yield shard
            shard = []
    if shard:
        yield shard


def _write_shards(
    run: RunFolder, entries_of_shards: Iterable[list[dict]], seen: set[str]
) -> list[dict]:
    """Write each shard's manifest (a few concurrently); return the plan records, in order."""
    shards = []
    writes: deque[Future] = deque()
    writers = 1 if run.output.is_local else MANIFEST_WRITERS  # local disk: threads only add GIL
    with ThreadPoolExecutor(writers, thread_name_prefix="labeler-plan") as pool:
        for entries in entries_of_shards:
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
    return shards


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
    shards = _write_shards(run, cut_into_shards(items, shard_size, name), set())
    if not shards:
        raise UserError("the input holds no images")
    run.write_plan(shards)
    logger.info("planned %d images in %d shards", sum(s["n_images"] for s in shards), len(shards))
    return run.read_plan()


@dataclass
class PlanChanges:
    """What re-listing the input on resume found (see :func:`extend_plan`)."""

    new_images: int = 0
    new_shards: list[dict] = field(default_factory=list)
    """Plan records of the shards appended for the new images."""
    removed_images: int = 0
    """Images of the plan that the input no longer lists (kept in the output)."""
    removed_examples: list[str] = field(default_factory=list)
    checked: bool = True
    """False when a manifest could not be read, so new images could not be told apart."""
    changed_images: int = 0
    """Images labeled from another version of their bytes than the listing shows now."""
    changed_shards: set[str] = field(default_factory=set)
    """The shards holding them."""
    changed_examples: list[str] = field(default_factory=list)


def extend_plan(
    run: RunFolder, items: Iterable[dict], shard_size: int,
    name: Callable[[str, int], str] | None = None, compare: set[str] | frozenset[str] = frozenset(),
) -> tuple[dict, PlanChanges]:
    """Append the images the input gained since the plan was made; return the plan and changes.

    ``items`` is the current listing, in collection order. An item is new when its URI is not
    in the existing manifests (counted, so a manifest listing one URI twice stays consistent).
    New images get ids after the plan's last id, in collection order, and are cut into new
    shards; existing shards are not rewritten. Plan URIs missing from the listing are reported.
    For the shards in ``compare`` (committed ones), images whose recorded identity differs
    from the item's ``identity`` are reported as changed, with their shards.
    """
    plan = run.read_plan()
    shard_ids = [shard["shard_id"] for shard in plan["shards"]]
    last_id = max((s["first_image_id"] + s["n_images"] - 1 for s in plan["shards"]), default=0)
    seen = set(shard_ids)
    with tempfile.TemporaryDirectory(prefix="labeler-resume-") as workdir:
        try:
            diff = diff_listing(planned_images(run, shard_ids, compare), items, plan["n_images"],
                                workdir)
        except ManifestError as error:
            logger.warning("new images not looked for: a manifest of %s is unreadable (%s)",
                           run.output.uri, error.__cause__)
            return plan, PlanChanges(checked=False)
        new_shards = _write_shards(
            run, cut_into_shards(diff.new_items(), shard_size, name, first_image_id=last_id + 1),
            seen,
        )
    changes = PlanChanges(
        new_images=sum(s["n_images"] for s in new_shards),
        new_shards=new_shards,
        removed_images=diff.removed,
        removed_examples=diff.removed_examples,
        changed_images=diff.changed,
        changed_shards=diff.changed_shards,
        changed_examples=diff.changed_examples,
    )
    if new_shards:
        run.write_plan(plan["shards"] + new_shards)
        plan = run.read_plan()
    return plan, changes


class ManifestError(Exception):
    """A plan manifest could not be read while diffing the listing (its error is the cause)."""


def planned_images(run: RunFolder, shard_ids: list[str],
                   compare: set[str] | frozenset[str] = frozenset()) -> Iterator[Planned]:
    """Every image of the plan, in plan order, read a few shards at a time: from the image
    part (with the identity recorded when it was read) for the shards in ``compare``, from the
    manifest (no identity) for the others and for a part that cannot be read.

    Raises:
        ManifestError: a manifest cannot be read (its error is the cause).
    """
    writers = 1 if run.output.is_local else MANIFEST_WRITERS
    with ThreadPoolExecutor(writers, thread_name_prefix="labeler-plan") as pool:
        pending: deque[Future] = deque()
        for shard_id in shard_ids:
            pending.append(pool.submit(_shard_images, run, shard_id, shard_id in compare))
            if len(pending) > 2 * writers:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


def _shard_images(run: RunFolder, shard_id: str, recorded: bool) -> list[Planned]:
    if recorded:
        try:
            table = parts.read_part(run.output, parts.shard_part(shard_id, parts.IMAGES),
                                    parts.IMAGES).select(["uri", "input_identity"])
            return [Planned(uri, identity, shard_id) for uri, identity in
                    zip(table.column(0).to_pylist(), table.column(1).to_pylist(), strict=True)]
        except Exception as error:  # noqa: BLE001 - damaged: the resume redoes it anyway
            logger.info("shard %s: its image part cannot be read (%s): its images' identities "
                        "are not compared", shard_id, error)
    try:
        entries = run.read_manifest(shard_id)
    except Exception as error:
        raise ManifestError(str(error)) from error
    return [Planned(entry["uri"], None, shard_id) for entry in entries]
