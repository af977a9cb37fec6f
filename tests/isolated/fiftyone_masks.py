"""Load a ``fiftyone`` export with FiftyOne's own COCO importer; save what it read.

Usage: ``fiftyone_masks.py DATASET_DIR DATA_PATH OUT_DIR``. FiftyOne starts its bundled mongod
on 127.0.0.1 (database folder: ``FIFTYONE_DATABASE_DIR``), imports ``DATASET_DIR/labels.json``
as a ``COCODetectionDataset`` with ``label_types="segmentations"`` and the images under
``DATA_PATH``. FiftyOne stores each instance mask cropped to its box; ``Detection.
to_segmentation`` puts it back on the full image. ``OUT_DIR/masks.npz`` holds, per image path
relative to ``DATA_PATH``: the (N, H, W) masks (H, W from the image FiftyOne read) and the (N,)
confidences; ``OUT_DIR/labels.json`` the class labels.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import fiftyone as fo
import numpy as np


def main(dataset_dir: str, data_path: str, out: str) -> None:
    dataset = fo.Dataset.from_dir(dataset_dir=dataset_dir, data_path=data_path,
                                  dataset_type=fo.types.COCODetectionDataset,
                                  label_types="segmentations", label_field="segmentations")
    dataset.compute_metadata()
    arrays, labels = {}, set()
    for sample in dataset:
        width, height = sample.metadata.width, sample.metadata.height
        detections = sample["segmentations"].detections if sample["segmentations"] else []
        masks = [d.to_segmentation(frame_size=(width, height), target=1).mask
                 for d in detections]
        name = str(Path(sample.filepath).relative_to(Path(data_path).resolve()))
        arrays[f"{name}|masks"] = np.array(masks, np.uint8).reshape(len(masks), height, width)
        arrays[f"{name}|confidence"] = np.array([d.confidence for d in detections], float)
        labels.update(d.label for d in detections)
    Path(out).mkdir(parents=True, exist_ok=True)
    np.savez_compressed(Path(out) / "masks.npz", **arrays)
    (Path(out) / "labels.json").write_text(json.dumps(sorted(labels)))
    dataset.delete()


if __name__ == "__main__":
    main(*sys.argv[1:])
