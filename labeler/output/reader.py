"""Streaming reader of labeler's own outputs: images with their annotations, shard by shard.

Two layouts hold the same rows (see :mod:`labeler.output.parts`):

* the committed shard parts ``run/shards/<shard>/`` of a run's plan (the merge reads these);
* a finished output: ``images.parquet`` plus ``annotations/part-NNNNNN-<shard>.parquet``.

Either way the reader holds one shard's annotation rows and one batch of image rows at a time,
so memory stays flat in the collection size. Images come in plan order, which is ascending
``image_id`` (ids are positions in the collection order); within an image, annotations come in
ascending ``id``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import pyarrow.parquet as pq

from labeler.errors import UserError
from labeler.io.folders import Folder
from labeler.output import parts, schema

#: Image rows read from ``images.parquet`` per batch.
IMAGE_BATCH_ROWS = 4096
_MERGED_PART = re.compile(r"^part-(\d{6})-(.+)\.parquet$")


class OutputReadError(UserError):
    """The folder is not a (finished) labeler output, or its parts disagree."""


@dataclass
class OutputImage:
    """One input image of an output and, when labeled, its annotation rows.

    Attributes:
        row: the ``images.parquet`` row (columns of :data:`labeler.output.schema.IMAGES`).
        annotations: its ``annotations/`` rows in ascending ``id`` (columns of
            :data:`labeler.output.schema.ANNOTATIONS`); empty for failed images.
    """

    row: dict
    annotations: list[dict] = field(default_factory=list)

    @property
    def image_id(self) -> int:
        return int(self.row["image_id"])

    @property
    def is_labeled(self) -> bool:
        return self.row["status"] == schema.IMAGE_STATUS_LABELED


class OutputReader:
    """Reads the rows of one output in plan order; build it with :meth:`open` or :meth:`of_shards`.

    Args:
        output: the output folder.
        sources: ``(shard_id, images part or None, annotations part)`` in plan order; a None
            images part means the shard's image rows come from ``images.parquet``.
        categories: the COCO categories.
        info: the COCO ``info`` block.
    """

    def __init__(self, output: Folder, sources: Sequence[tuple[str, str | None, str]],
                 categories: list[dict], info: dict) -> None:
        self.output = output
        self.sources = list(sources)
        self.categories = categories
        self.info = info

    @classmethod
    def of_shards(cls, output: Folder, shard_ids: Sequence[str], categories: list[dict],
                  info: dict) -> OutputReader:
        """A reader of the committed parts of ``shard_ids`` (plan order) under ``run/shards``."""
        sources = [(shard_id, parts.shard_part(shard_id, parts.IMAGES),
                    parts.shard_part(shard_id, parts.ANNOTATIONS)) for shard_id in shard_ids]
        return cls(output, sources, categories, info)

    @classmethod
    def open(cls, output: Folder) -> OutputReader:
        """A reader of a finished output (``images.parquet`` and ``annotations/``).

        Raises:
            OutputReadError: no ``images.parquet`` (not a finished labeler output), or no
                categories recorded.
        """
        if not output.exists(parts.MERGED_IMAGES):
            raise OutputReadError(
                f"no {parts.MERGED_IMAGES} in {output.uri}: is it the --output of a finished labeler run?"
            )
        positioned = []
        for name in output.list(parts.MERGED_ANNOTATIONS_DIR):
            match = _MERGED_PART.match(name)
            if match:
                positioned.append((int(match.group(1)), match.group(2), name))
        sources = [(shard_id, None, f"{parts.MERGED_ANNOTATIONS_DIR}/{name}")
                   for _, shard_id, name in sorted(positioned)]
        categories, info = _read_meta(output)
        return cls(output, sources, categories, info)

    # -- streaming ---------------------------------------------------------------------------
    def image_rows(self) -> Iterator[dict]:
        """Every image row (labeled and failed), in plan order, without annotations."""
        if any(images is None for _, images, _ in self.sources):
            yield from self._merged_image_rows()
            return
        for _, images, _ in self.sources:
            yield from parts.read_part(self.output, images, parts.IMAGES).to_pylist()

    def annotation_rows(self) -> Iterator[dict]:
        """Every annotation row, in plan order (one shard's part in memory at a time)."""
        for _, _, part in self.sources:
            table = parts.read_part(self.output, part, parts.ANNOTATIONS)
            for batch in table.to_batches(max_chunksize=IMAGE_BATCH_ROWS):
                yield from batch.to_pylist()

    def images(self, image_ids: Iterable[int] | None = None) -> Iterator[OutputImage]:
        """Images with their annotations, in plan order; only ``image_ids`` when given."""
        wanted = None if image_ids is None else set(image_ids)
        annotations_of = {shard_id: part for shard_id, _, part in self.sources}
        shard, grouped = None, {}
        for row in self.image_rows():
            if wanted is not None and int(row["image_id"]) not in wanted:
                continue
            if row["shard_id"] != shard:
                shard = row["shard_id"]
                if shard not in annotations_of:
                    raise OutputReadError(
                        f"{self.output.uri}: image {row['image_id']} belongs to shard {shard}, "
                        "which has no annotation part"
                    )
                grouped = self._annotations_by_image(annotations_of[shard])
            yield OutputImage(row, grouped.pop(int(row["image_id"]), []))

    def category_counts(self) -> Counter:
        """Annotations per category id over the whole output (reads one column per part)."""
        counts: Counter = Counter()
        for _, _, part in self.sources:
            with self.output.open(part) as handle:
                column = pq.read_table(handle, columns=["category_id"]).column("category_id")
            counts.update(column.to_pylist())
        return counts

    def used_categories(self) -> dict[int, set[str]]:
        """The names each category id has in the annotations (reads two columns per part)."""
        used: dict[int, set[str]] = {}
        for _, _, part in self.sources:
            with self.output.open(part) as handle:
                table = pq.read_table(handle, columns=["category_id", "category_name"])
            for category, name in zip(table.column("category_id").to_pylist(),
                                      table.column("category_name").to_pylist()):
                used.setdefault(int(category), set()).add(name)
        return used

    # -- internals ---------------------------------------------------------------------------
    def _merged_image_rows(self) -> Iterator[dict]:
        with self.output.open(parts.MERGED_IMAGES) as handle:
            for batch in pq.ParquetFile(handle).iter_batches(batch_size=IMAGE_BATCH_ROWS):
                yield from batch.to_pylist()

    def _annotations_by_image(self, relative: str) -> dict[int, list[dict]]:
        table = parts.read_part(self.output, relative, parts.ANNOTATIONS)
        grouped: dict[int, list[dict]] = {}
        for row in table.to_pylist():
            grouped.setdefault(int(row["image_id"]), []).append(row)
        for rows in grouped.values():
            rows.sort(key=lambda r: r["id"])
        return grouped


def with_used_categories(categories: list[dict], used: dict[int, set[str]],
                         supercategory: str) -> list[dict]:
    """A method's categories plus those its annotations brought (open categories: DiffSeg's
    caption nouns), the added ones sorted by name, each with ``supercategory``.

    Raises:
        OutputReadError: one id carries two names (ids derived from names collided).
    """
    known = {c["id"] for c in categories}
    added = []
    for category, names in used.items():
        if len(names) > 1:
            raise OutputReadError(f"category id {category} names {sorted(names)}: ids derived "
                                  "from names collided; relabel with one of them renamed")
        if category not in known:
            added.append({"id": category, "name": next(iter(names)), "supercategory": supercategory})
    return [*categories, *sorted(added, key=lambda c: (c["name"], c["id"]))]


def write_meta(output: Folder, categories: list[dict], info: dict) -> None:
    """Record the categories and COCO info beside the parts (``run/output.json``)."""
    output.write_json(parts.OUTPUT_META, {"categories": categories, "info": info})


def _read_meta(output: Folder) -> tuple[list[dict], dict]:
    if output.exists(parts.OUTPUT_META):
        meta = output.read_json(parts.OUTPUT_META)
        return meta["categories"], meta["info"]
    if output.exists(parts.RUN_CATEGORIES):
        return output.read_json(parts.RUN_CATEGORIES), {}
    raise OutputReadError(
        f"no {parts.OUTPUT_META} in {output.uri}: merge it again with labeler run (same command)"
    )
