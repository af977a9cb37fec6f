"""Read a YOLO-seg export with Ultralytics' own checker and label parser; save what it read.

Usage: ``ultralytics_masks.py DATA_YAML OUT_DIR``. ``check_det_dataset`` resolves the dataset
from ``data.yaml``; each image of the train and val splits goes through ``verify_image_label`` (the check
Ultralytics runs before training: image readable, labels well-formed and in range) and each
segment is filled by ``polygon2mask``, Ultralytics' own rasteriser. ``OUT_DIR/masks.npz`` holds,
per image path relative to its split's folder, its class ids (N,) and (N, H, W) masks;
``OUT_DIR/names.json`` the dataset's class names as Ultralytics resolved them, and
``OUT_DIR/splits.json`` the image paths of each split (``val`` is ``train``'s folder when
``data.yaml`` names no other).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from ultralytics.data.utils import (
    IMG_FORMATS,
    check_det_dataset,
    img2label_paths,
    polygon2mask,
    verify_image_label,
)


def main(data_yaml: str, out: str) -> None:
    data = check_det_dataset(data_yaml)
    arrays, splits = {}, {}
    for split in ("train", "val"):
        splits[split] = _read_split(Path(data[split]), data["nc"], arrays)
    np.savez_compressed(Path(out) / "masks.npz", **arrays)
    names = {str(k): v for k, v in data["names"].items()}
    (Path(out) / "names.json").write_text(json.dumps(names))
    (Path(out) / "splits.json").write_text(json.dumps(splits))


def _read_split(folder: Path, classes: int, arrays: dict) -> list[str]:
    """Check and rasterise every image of one split folder into ``arrays``; their names."""
    images = sorted(str(p) for p in folder.rglob("*") if p.suffix[1:].lower() in IMG_FORMATS)
    names = []
    for image, label in zip(images, img2label_paths(images)):
        _, boxes, shape, segments, _, missing, found, _, corrupt, message = verify_image_label(
            (image, label, "", False, classes, 0, 0, False))
        if corrupt or missing or not found:
            raise SystemExit(f"{image}: {message or 'label missing'}")
        height, width = shape
        masks = [polygon2mask((height, width), [segment * [width, height]], 1, 1)
                 for segment in segments]
        name = str(Path(image).relative_to(folder))
        arrays[f"{name}|classes"] = boxes[:, 0].astype(np.int64)
        arrays[f"{name}|masks"] = np.array(masks, np.uint8).reshape(len(masks), height, width)
        names.append(name)
    return names


if __name__ == "__main__":
    main(*sys.argv[1:])
