"""Run a ``fiftyone`` export's own ``load_fiftyone.py``; save the fields and what they hold.

Usage: ``fiftyone_loader.py EXPORT_DIR OUT_DIR``. ``OUT_DIR/loaded.json`` holds the dataset's
label fields and, per image file name, the (label, confidence, mask pixel count) of each
detection in the loader's ``LABEL_FIELD``.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path


def main(export_dir: str, out: str) -> None:
    spec = importlib.util.spec_from_file_location("load_fiftyone",
                                                  Path(export_dir) / "load_fiftyone.py")
    loader = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loader)
    dataset = loader.load()
    dataset.compute_metadata()
    found = {}
    for sample in dataset:
        width, height = sample.metadata.width, sample.metadata.height
        labels = sample[loader.LABEL_FIELD]
        found[Path(sample.filepath).name] = [
            (d.label, d.confidence,
             int(d.to_segmentation(frame_size=(width, height), target=1).mask.sum()))
            for d in (labels.detections if labels else [])]
    fields = sorted(dataset.get_field_schema())
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "loaded.json").write_text(json.dumps({"fields": fields, "found": found}))
    dataset.delete()


if __name__ == "__main__":
    main(*sys.argv[1:])
