"""Build small ``labeler run``-style output folders (and ground truth) for tests.

Everything is written with fsspec, so the same helpers build local and ``memory://`` fixtures.
Outputs are written as a run writes them: shard parts through ``labeler.output.parts``, then
``merge_outputs`` (``coco.json``, ``images.parquet``, ``annotations/``).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from labeler.io.folders import Folder
from labeler.output import parts
from labeler.output.merge import merge_outputs
from labeler.output.rows import AnnotationRow, ImageRow

#: The one shard of a fixture output.
SHARD = "fixture-shard"


def _write(uri: str, data: bytes) -> None:
    fs, path = fsspec.core.url_to_fs(uri)
    parent = path.rsplit("/", 1)[0]
    if parent:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(path, "wb") as f:
        f.write(data)


def png_bytes(array: np.ndarray) -> bytes:
    """PNG of a uint8 (H, W) or (H, W, 3) array."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def rle(mask: np.ndarray) -> dict[str, Any]:
    """Compressed RLE with string counts."""
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"].decode("ascii")}


def bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [
        float(xs.min()),
        float(ys.min()),
        float(xs.max() - xs.min() + 1),
        float(ys.max() - ys.min() + 1),
    ]


@dataclass
class FixtureImage:
    """One input image of a fixture output.

    ``masks`` is a list of (category_id, bool mask, score); ``failed`` images have a reason and
    no masks.
    """

    name: str
    pixels: np.ndarray
    masks: list[tuple[int, np.ndarray, float]] = field(default_factory=list)
    failed: str | None = None


def segments_from_label_map(
    labels: np.ndarray, category_id: int = 1
) -> list[tuple[int, np.ndarray, float]]:
    """One mask per segment id >= 0 (in increasing id order); negative ids stay unannotated."""
    out = []
    for seg in sorted(int(v) for v in np.unique(labels) if v >= 0):
        out.append((category_id, labels == seg, 1.0))
    return out


def classes_from_label_map(
    labels: np.ndarray, index_to_category: dict[int, int]
) -> list[tuple[int, np.ndarray, float]]:
    """One mask per class index present, using ``index_to_category`` (index 0 = background: none)."""
    out = []
    for idx in sorted(int(v) for v in np.unique(labels)):
        if idx in index_to_category:
            out.append((index_to_category[idx], labels == idx, 0.9))
    return out


def write_output(
    root: str, images: list[FixtureImage], categories: list[dict[str, Any]],
    method: str = "fixture", relative_names: bool = False, shard_size: int | None = None,
) -> dict[str, Any]:
    """Write sources under ``root/src`` and the output under ``root/out``; returns the COCO dict.

    The output is made as a run makes it: one shard's parts written with the real part writers
    (``labeler.output.parts``), then merged by ``merge_outputs``. With ``relative_names`` it is
    a finished output as a folder input leaves it (``file_name`` relative to ``root/src``, the
    image root, and ``run/config.json``), which ``labeler export`` and ``labeler report`` read.
    ``shard_size`` splits the images into shards of that many (default: one shard).
    """
    out = root.rstrip("/") + "/out"
    names = {int(c["id"]): str(c["name"]) for c in categories}
    rows_of: dict[str, tuple[list, list]] = {}
    ann_id = 1
    for image_id, im in enumerate(images, start=1):
        shard = SHARD if shard_size is None else f"{SHARD}-{(image_id - 1) // shard_size}"
        image_rows, annotation_rows = rows_of.setdefault(shard, ([], []))
        uri = root.rstrip("/") + f"/src/{im.name}.png"
        _write(uri, png_bytes(im.pixels))
        h, w = im.pixels.shape[:2]
        status = "failed" if im.failed else "labeled"
        masks = [] if im.failed else im.masks
        image_rows.append(ImageRow(uri=uri, image_id=image_id, status=status, reason=im.failed,
                                   detail=None, width=w, height=h, n_annotations=len(masks),
                                   shard_id=shard,
                                   file_name=f"{im.name}.png" if relative_names else uri))
        for cat, mask, score in masks:
            segmentation = rle(mask)
            annotation_rows.append(AnnotationRow(
                id=ann_id, image_id=image_id, category_id=cat, category_name=names.get(cat, "?"),
                segmentation_counts=segmentation["counts"], segmentation_size=segmentation["size"],
                area=int(mask.sum()), bbox=bbox(mask), iscrowd=0, score=score, file_name=uri,
                method=method, model="fixture", resource_digest=None, run_id="fixture",
            ))
            ann_id += 1
    for shard, (image_rows, annotation_rows) in rows_of.items():
        for kind, rows in ((parts.IMAGES, image_rows), (parts.ANNOTATIONS, annotation_rows)):
            _write(out + "/" + parts.shard_part(shard, kind), parts.encode_part(kind, rows))
    info: dict[str, Any] = {"method": method}
    if relative_names:
        info.update(run_id="fixture-run", image_root=root.rstrip("/") + "/src")
        Folder(out).write_json("run/config.json", {
            "fingerprint": "fixture-run", "settings": {"method": method}, "created": None,
            "labeler_version": "fixture", "image_root": info["image_root"]})
    merge_outputs(Folder(out), list(rows_of), categories, info)
    with fsspec.open(out + "/coco.json", "rb") as handle:
        return json.loads(handle.read())


def write_label_maps(
    folder: str, maps: dict[str, np.ndarray], classes: list[str] | None = None
) -> None:
    """Label-map PNGs ``folder/<stem>.png`` and optionally ``classes.txt``."""
    for stem, labels in maps.items():
        _write(f"{folder.rstrip('/')}/{stem}.png", png_bytes(labels))
    if classes is not None:
        _write(f"{folder.rstrip('/')}/classes.txt", ("\n".join(classes) + "\n").encode())


def write_coco_gt(
    uri: str,
    images: list[tuple[str, int, int]],
    instances: list[tuple[str, int, np.ndarray]],
    categories: list[dict[str, Any]],
) -> None:
    """COCO instances ground truth: ``images`` = (file_name, height, width), ``instances`` = (file_name, category_id, mask)."""
    ids = {name: i for i, (name, _, _) in enumerate(images, start=100)}
    coco = {
        "images": [{"id": ids[n], "file_name": n, "height": h, "width": w} for n, h, w in images],
        "annotations": [
            {
                "id": i,
                "image_id": ids[n],
                "category_id": c,
                "segmentation": rle(m),
                "area": int(m.sum()),
                "bbox": bbox(m),
                "iscrowd": 0,
            }
            for i, (n, c, m) in enumerate(instances, start=1)
        ],
        "categories": categories,
    }
    _write(uri, json.dumps(coco).encode())


def write_review_output(root: str) -> dict[str, Any]:
    """A finished SLiMe-like output (``root/out``, images in ``root/src``) for the export tests:
    ``a.png`` with a ``cat`` mask holding a hole and a one-pixel fragment and a ``dog`` block,
    ``b.png`` with one ``dog``, ``c.png`` labeled without masks, ``d.png`` failed."""
    def pixels(seed: int, height: int, width: int) -> np.ndarray:
        return np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)

    ring = np.zeros((24, 32), bool)
    ring[2:20, 2:20] = True
    ring[8:12, 8:12] = False
    ring[22, 30] = True
    block = np.zeros((24, 32), bool)
    block[4:10, 22:30] = True
    small = np.zeros((16, 20), bool)
    small[3:9, 3:17] = True
    return write_output(root, [
        FixtureImage("a", pixels(0, 24, 32), [(1, ring, 0.91), (2, block, 0.42)]),
        FixtureImage("b", pixels(1, 16, 20), [(2, small, 0.7)]),
        FixtureImage("c", pixels(2, 12, 12)),
        FixtureImage("d", pixels(3, 12, 12), failed="decode_error"),
    ], [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}], method="slime", relative_names=True)
