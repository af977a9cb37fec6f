"""COCO instances files of any size: one ``coco.json``, or ``coco/part-NNNNN.json`` and an index.

A file is assembled from *fragments* (:func:`labeler.output.coco_records.render`: records one per
line, joined by ``",\\n"``) by byte concatenation: its header (``info``), the image fragments,
the annotation fragments, then the categories. No record is parsed or rendered here, so writing
costs one pass over the bytes, whoever rendered them (a run's workers at commit, or an exporter).

:class:`CocoFilesWriter` takes fragments in order and starts a new file before one that would
push the current file past ``max_annotations`` (a fragment is never split: a single fragment
above the bound gets a file of its own). When everything fits one file it is written at the
single name (``coco.json``); otherwise the files are ``coco/part-00000.json``, ... and
``coco/index.json`` names them with their image and annotation counts. Every file is a complete
COCO instances file (its images, their annotations, all categories, the ``info`` block).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from labeler.io.folders import Folder

COCO_DIR = "coco"
COCO_INDEX = f"{COCO_DIR}/index.json"
#: Default ``coco_max_annotations``: ~630 bytes per annotation keeps a file near 150 MB, which
#: ``json.load`` (pycocotools) reads in about 0.6 GB of memory.
DEFAULT_MAX_ANNOTATIONS = 250_000
#: Bytes read per block while concatenating.
_BLOCK = 1 << 20


#: The bytes between a file's images and its annotations.
BETWEEN = b'],\n"annotations": ['


def file_header(info: dict) -> bytes:
    """A COCO file's first bytes: its ``info`` block, then the opening of ``images``."""
    return ('{"info": ' + json.dumps(info, sort_keys=True) + ',\n"images": [').encode()


def file_footer(categories: list[dict]) -> bytes:
    """A COCO file's last bytes: the end of ``annotations``, then the categories."""
    return ('],\n"categories": ' + json.dumps(categories) + "}\n").encode()


def concatenated(fragments: Iterable[bytes]) -> Iterator[bytes]:
    """The bytes :class:`CocoFilesWriter` writes for these fragments, in order (separators
    before each non-empty one)."""
    separator = b"\n"
    for fragment in fragments:
        if fragment:
            yield separator
            yield fragment
            separator = b",\n"


def part_name(number: int) -> str:
    """The ``number``-th file of a split COCO output, relative to the output."""
    return f"{COCO_DIR}/part-{number:05d}.json"


@dataclass(frozen=True)
class Fragment:
    """One unit of a COCO file: an image fragment and an annotation fragment, with counts.

    Attributes:
        folder: where both fragment files are.
        images, annotations: their paths relative to ``folder``.
        n_images, n_annotations: the records each holds.
        temporary: remove both files once written into a COCO file.
        position: the plan position of the shard it comes from (recorded in the index).
    """

    folder: Folder
    images: str
    annotations: str
    n_images: int
    n_annotations: int
    temporary: bool = False
    position: int | None = None


@dataclass
class _Group:
    fragments: list[Fragment] = field(default_factory=list)

    @property
    def n_annotations(self) -> int:
        return sum(fragment.n_annotations for fragment in self.fragments)


class CocoFilesWriter:
    """Writes fragments, in order, to ``single`` or to ``coco/part-*.json`` with an index.

    Args:
        out: the folder written to.
        single: the file name when everything fits one file (e.g. ``coco.json``).
        info: the COCO ``info`` block of every file.
        categories: the COCO categories of every file.
        max_annotations: the most annotations a file holds (unless one fragment holds more).
        parts_dir: the folder of the split files and their index.
    """

    def __init__(self, out: Folder, single: str, info: dict, categories: list[dict],
                 max_annotations: int, parts_dir: str = COCO_DIR) -> None:
        if max_annotations < 1:
            raise ValueError(f"max_annotations must be >= 1 (got {max_annotations})")
        self.out = out
        self.single = single
        self.max_annotations = max_annotations
        self.parts_dir = parts_dir
        self._header = file_header(info)
        self._footer = file_footer(categories)
        self._current = _Group()
        self._index: list[dict] = []

    def add(self, fragment: Fragment) -> None:
        """Append one fragment (the current file is written first when it would overflow)."""
        current = self._current
        if current.fragments and (current.n_annotations + fragment.n_annotations
                                  > self.max_annotations):
            self._write(self._part(len(self._index)), current)
            self._current = _Group()
        self._current.fragments.append(fragment)

    def close(self) -> list[str]:
        """Write what is left; returns the files written (the single file, or the index)."""
        if not self._index:
            self._write(self.single, self._current)
            self.out.remove(self.parts_dir, recursive=True)
            return [self.single]
        self._write(self._part(len(self._index)), self._current)
        index = f"{self.parts_dir}/index.json"
        self.out.write_json(index, {
            "files": self._index,
            "images": sum(entry["images"] for entry in self._index),
            "annotations": sum(entry["annotations"] for entry in self._index),
        })
        kept = {e["file"] for e in self._index} | {"index.json"}
        for stale in set(self.out.list(self.parts_dir)) - kept:
            if not self.out.fs.isdir(self.out.path(f"{self.parts_dir}/{stale}")):
                self.out.remove(f"{self.parts_dir}/{stale}")
        self.out.remove(self.single)
        return [index]

    def abort(self) -> None:
        """Remove the files written so far and the temporary fragments not yet written."""
        for entry in self._index:
            self.out.remove(f"{self.parts_dir}/{entry['file']}")
        for fragment in self._current.fragments:
            if fragment.temporary:
                fragment.folder.remove(fragment.images)
                fragment.folder.remove(fragment.annotations)
        self._index.clear()
        self._current = _Group()

    def _part(self, number: int) -> str:
        return f"{self.parts_dir}/{part_name(number).rsplit('/', 1)[1]}"

    def _write(self, relative: str, group: _Group) -> None:
        with self.out.open_atomic_writer(relative) as handle:
            handle.write(self._header)
            _concatenate(handle, [(f.folder, f.images) for f in group.fragments])
            handle.write(BETWEEN)
            _concatenate(handle, [(f.folder, f.annotations) for f in group.fragments])
            handle.write(self._footer)
        positions = [f.position for f in group.fragments if f.position is not None]
        entry = {"file": relative.rsplit("/", 1)[-1],
                 "images": sum(f.n_images for f in group.fragments),
                 "annotations": group.n_annotations}
        if positions:
            entry["shards"] = [min(positions), max(positions) + 1]
        self._index.append(entry)
        for fragment in group.fragments:
            if fragment.temporary:
                fragment.folder.remove(fragment.images)
                fragment.folder.remove(fragment.annotations)


def _concatenate(handle, sources: Iterable[tuple[Folder, str]]) -> None:
    """Write each non-empty fragment file, ``"\\n"`` before the first and ``",\\n"`` between."""
    separator = b"\n"
    for folder, relative in sources:
        with folder.open(relative) as fragment:
            block = fragment.read(_BLOCK)
            if not block:
                continue
            handle.write(separator)
            separator = b",\n"
            while block:
                handle.write(block)
                block = fragment.read(_BLOCK)


def coco_files(output: Folder, single: str) -> list[str] | None:
    """The COCO files of a finished output (``single``, or the index's parts); None if neither."""
    if output.exists(COCO_INDEX):
        return [f"{COCO_DIR}/{entry['file']}" for entry in output.read_json(COCO_INDEX)["files"]]
    if output.exists(single):
        return [single]
    return None
