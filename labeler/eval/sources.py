"""Where ``labeler eval --pred`` reads predictions from: a run's output, or plain COCO.

Three kinds of source, told apart by what is there:

* the ``--output`` of a labeler run (``run/output.json`` beside ``images.parquet`` and
  ``annotations/``): streamed through :func:`labeler.eval.loading.load_predictions`;
* a folder in the documented output layout without the run's own files (``coco.json`` copied
  elsewhere, another tool's output), or a COCO instances file (``images``, ``annotations``,
  ``categories``): the images and categories are the file's;
* a COCO results file (a JSON list of ``{"image_id", "category_id", "segmentation", "score"}``,
  what detectors and ``COCOeval`` exchange): it names images and categories by their ids in the
  ground truth, so ``--gt`` must be a COCO instances file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from labeler.eval.loading import (
    EvalInputError,
    GroundTruth,
    ImageRecord,
    Predictions,
    PredImage,
    load_predictions,
)
from labeler.io.folders import Folder
from labeler.io.listing import path_kind
from labeler.io.reading import read_file
from labeler.io.uris import join_uri
from labeler.output import parts
from labeler.output.schema import IMAGE_STATUS_LABELED


def open_predictions(uri: str, gt: GroundTruth, storage_options: dict | None = None) -> Predictions:
    """The predictions at ``uri``: a run's output, a folder holding ``coco.json``, a COCO
    instances file or a COCO results file (see the module docstring).

    Raises:
        EvalInputError: nothing usable at ``uri`` (the message says what was looked for).
    """
    kind = path_kind(uri, storage_options=storage_options)
    if kind is None:
        raise EvalInputError(f"--pred {uri}: not found")
    if kind == "directory":
        folder = Folder(uri, storage_options)
        if folder.exists(parts.OUTPUT_META):
            return load_predictions(uri, storage_options)
        if not folder.exists(parts.COCO_JSON):
            raise EvalInputError(
                f"--pred {uri}: neither a labeler output ({parts.OUTPUT_META}) nor a folder "
                f"holding {parts.COCO_JSON}; give the --output of a run, a COCO instances or results "
                ".json, or such a folder")
        uri = join_uri(uri, parts.COCO_JSON)
    try:
        content = json.loads(read_file(uri, storage_options))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise EvalInputError(f"--pred {uri}: not a JSON file ({error})") from None
    if isinstance(content, list):
        return results_predictions(content, gt, uri)
    if isinstance(content, dict) and isinstance(content.get("images"), list):
        return instances_predictions(content, uri)
    raise EvalInputError(f"--pred {uri}: neither a COCO instances file (images, annotations, "
                         "categories) nor a COCO results file (a list of annotations)")


def instances_predictions(coco: dict[str, Any], uri: str) -> Predictions:
    """Predictions from a COCO instances file's images, annotations and categories."""
    images = {int(image["id"]): _pred_image(image) for image in coco["images"]}
    categories = {int(c["id"]): c for c in coco.get("categories", [])}
    return _in_memory(uri, images, categories, coco.get("annotations", []))


def results_predictions(results: list[Any], gt: GroundTruth, uri: str) -> Predictions:
    """Predictions from a COCO results file: images and categories are the ground truth's.

    Raises:
        EvalInputError: the ground truth is not a COCO file, or a result names an image or a
            category the ground truth does not have.
    """
    if gt.kind != "coco" or gt.coco is None:
        raise EvalInputError(f"--pred {uri} is a COCO results file: it names images by their ids "
                             "in the ground truth, so --gt must be a COCO instances .json")
    images = {image_id: _pred_image(image) for image_id, image in gt.coco_images.items()}
    categories = {int(c["id"]): c for c in gt.coco.get("categories", [])}
    for result in results:
        if not isinstance(result, dict) or "segmentation" not in result:
            raise EvalInputError(f"--pred {uri}: every result needs image_id, category_id and "
                                 "segmentation (a segmentation results file)")
        if int(result["image_id"]) not in images:
            raise EvalInputError(f"--pred {uri}: image_id {result['image_id']} is not in --gt")
        if int(result["category_id"]) not in categories:
            raise EvalInputError(f"--pred {uri}: category_id {result['category_id']} is not in --gt")
    return _in_memory(uri, images, categories, results)


def _pred_image(image: dict[str, Any]) -> PredImage:
    name = image.get("file_name") or image.get("coco_url") or str(image["id"])
    return PredImage(int(image["id"]), str(name), int(image["width"]), int(image["height"]),
                     uri=str(image.get("coco_url") or name))


def _in_memory(uri: str, images: dict[int, PredImage], categories: dict[int, dict],
               annotations: list[dict[str, Any]]) -> Predictions:
    by_image: dict[int, list[dict[str, Any]]] = {}
    for index, annotation in enumerate(annotations):
        annotation = {"id": index + 1, "score": 1.0, "iscrowd": 0, **annotation}
        by_image.setdefault(int(annotation["image_id"]), []).append(annotation)
    records = [ImageRecord(uri=image.uri, image_id=image_id, status=IMAGE_STATUS_LABELED,
                           reason=None, width=image.width, height=image.height,
                           n_annotations=len(by_image.get(image_id, [])))
               for image_id, image in sorted(images.items())]

    def stream(image_ids: Iterable[int]) -> Iterator[PredImage]:
        for image_id in sorted(set(image_ids)):
            image = images.get(image_id)
            if image is not None:
                annotated = sorted(by_image.get(image_id, []), key=lambda a: int(a["id"]))
                yield PredImage(image.image_id, image.file_name, image.width, image.height,
                                annotated, image.uri)

    return Predictions(uri=uri, images=images, categories=categories, records=records,
                       stream=stream)
