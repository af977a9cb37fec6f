"""What the last merge wrote (``run/merged.json``), so a re-run skips an unchanged merge and
heals a damaged one.

After a merge the driver records the shards it covered, its counts, and a stamp of every file it
wrote (:data:`labeler.output.parts.FINAL_OUTPUTS` and ``run/output.json``): size and the store's
version stamp (an object store's ETag, else the modification time by the store's clock; see
:func:`labeler.runtime.integrity.part_stamp`), one metadata call per file, nothing read. An
S3 listing and a HEAD request give the same ETag but not the same time (milliseconds vs
whole seconds), so the time is only the stamp where nothing better is kept. A re-run of a finished output
merges again only when the shards differ or a merged file no longer matches its stamp (truncated,
rewritten, removed); the merge then rebuilds it from the shard parts, which the driver has just
hashed, so nothing is labeled again. ``labeler status`` reports such a file as ``damaged``;
``labeler verify`` checks the merged files' content.
"""

from __future__ import annotations

from labeler.io.folders import Folder
from labeler.output import parts
from labeler.output.coco_files import coco_files
from labeler.runtime.integrity import info_stamp

MERGED_RECORD = "run/merged.json"


def merged_files(output: Folder) -> list[str]:
    """The files a merge wrote: the final outputs (folders expanded) and ``run/output.json``;
    names that do not exist are listed too (:func:`file_stamp` says so)."""
    files = []
    for name in (*parts.FINAL_OUTPUTS, parts.OUTPUT_META):
        if output.exists(name) and output.fs.isdir(output.path(name)):
            files += sorted(output.files_under(name))
        else:
            files.append(name)
    return files


def file_stamp(output: Folder, relative: str) -> dict | None:
    """``{"bytes", "stamp"}`` of one file (store metadata only), None when it is missing."""
    try:
        info = output.fs.info(output.path(relative))
    except FileNotFoundError:
        return None
    return {"bytes": info.get("size"), "stamp": info_stamp(info)}


def record_merge(output: Folder, shard_ids: list[str], counts: dict,
                 layout: dict | None = None) -> None:
    """Write ``run/merged.json`` after a merge of ``shard_ids`` that produced ``counts``, with
    the settings that shaped the files (``layout``: e.g. ``coco_max_annotations``)."""
    output.fs.invalidate_cache()  # the merge just wrote these files: no cached sizes
    stamps = {relative: stamp for relative in merged_files(output)
              if (stamp := file_stamp(output, relative)) is not None}
    output.write_json(MERGED_RECORD, {"shards": shard_ids, "counts": counts, "files": stamps,
                                      "layout": layout or {}})


def merge_damage(output: Folder, record: dict) -> dict[str, str]:
    """Merged files that no longer match the stamps in ``record``: ``{file: what changed}``."""
    damage = {}
    for relative, stamp in record.get("files", {}).items():
        now = file_stamp(output, relative)
        if now is None:
            damage[relative] = "missing"
        elif now["bytes"] != stamp["bytes"]:
            damage[relative] = f"{stamp['bytes']} bytes when merged, {now['bytes']} now"
        elif now["stamp"] != stamp.get("stamp"):
            damage[relative] = "rewritten since the merge"
    return damage


def read_merge_record(output: Folder) -> dict | None:
    """``run/merged.json``, or None when the output was never merged (or the record is gone)."""
    try:
        return output.read_json(MERGED_RECORD)
    except FileNotFoundError:
        return None


def unchanged_merge(output: Folder, shard_ids: list[str],
                    layout: dict | None = None) -> tuple[dict | None, dict[str, str]]:
    """(counts, damage): the last merge's counts when it covered exactly ``shard_ids`` with the
    same ``layout`` and every file it wrote still matches (else None), and the damaged files."""
    record = read_merge_record(output)
    if record is None or record.get("shards") != shard_ids \
            or record.get("layout", {}) != (layout or {}):
        return None, {}
    missing = [name for name in (parts.MERGED_IMAGES,) if not output.exists(name)]
    if coco_files(output, parts.COCO_JSON) is None:
        missing.append(parts.COCO_JSON)
    damage = merge_damage(output, record) or {name: "missing" for name in missing}
    return (None if damage else record["counts"]), damage
