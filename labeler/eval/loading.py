"""Reading a ``labeler run`` output and ground truth, and rasterising both to label maps.

Prediction side (an output folder, any fsspec URI):

* read through :class:`labeler.output.reader.OutputReader`: ``images.parquet`` gives every input
  image with its status (failed ones too), ``annotations/`` the annotations (compressed RLE at the
  original resolution), streamed shard by shard, so memory does not grow with the output.
* Predictions are *segments* (class-agnostic: DiffSeg's single ``segment`` category) or
  *classes* (SLiMe's named categories). ``auto`` picks segments when the file has exactly one
  category and it is named ``segment``.
* Rasterisation paints the annotations of an image in ascending ``(score, id)`` order, so where
  masks overlap the highest-scoring annotation wins.

  - segments: the label of a pixel is the segment index, i.e. the rank of its annotation in
    ascending annotation ``id`` order within the image (0, 1, ...). Unannotated pixels are
    ``VOID`` (-1): evaluated, never matched, a miss for their ground-truth class.
  - classes: the label is the ground-truth class index the category maps to (see
    ``build_class_mapping``). Unannotated pixels are background (SLiMe writes no background
    annotation) unless ``unannotated="void"``. Categories with no ground-truth counterpart are
    painted ``VOID``. A named DiffSeg run's ``segment`` category (the segments no name explains)
    is *unnamed*: its annotations are not painted, so their pixels count as unannotated.

Ground-truth side (``load_ground_truth``):

* a COCO instances file: class index 0 is ``background`` (or the GT category named
  ``background``), then the GT categories in ascending id order. Instances are painted largest
  first (so smaller objects stay on top); crowd regions (``iscrowd`` 1) are then painted as
  ignored; unannotated pixels are background.
* a folder of label-map PNGs (or ``.npy``), searched recursively and keyed by file stem. The
  pixel value is the class index; 255 and negative values are ignored. RGB PNGs use channel 0.
  Class names come from ``--classes`` or a ``classes.txt`` / ``classes.json`` at the folder's
  root (see ``parse_classes``).

Predictions are resized with nearest neighbour to the ground-truth size when they differ.

Every file is read through :mod:`labeler.io` (the runtime's storage layer), with the same storage
options and retries as ``labeler run``.
"""

from __future__ import annotations

import io
import json
import logging
import posixpath
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from labeler.errors import UserError
from labeler.io.folders import Folder
from labeler.io.listing import list_files, path_kind
from labeler.io.reading import read_file
from labeler.io.uris import uri_stem
from labeler.metrics import VOID
from labeler.output.coco_records import coco_annotation
from labeler.output.reader import OutputReader, OutputReadError
from labeler.output.rle import decode_mask
from labeler.output.schema import IMAGE_STATUS_LABELED

log = logging.getLogger(__name__)

IGNORE = -1
"""Value of ignored ground-truth pixels after loading (255 and negative values become this)."""

CLASSES_FILES = ("classes.txt", "classes.json")
UNNAMED = "segment"
"""Name of the category of a named DiffSeg run's segments that no name explains (and of every
segment of a class-agnostic run)."""
LABEL_MAP_EXTENSIONS = (".png", ".npy")


class EvalInputError(UserError):
    """Raised for unusable inputs (missing files, no image pairs, ambiguous mappings)."""


# --------------------------------------------------------------------------------------------
# RLE helpers


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Decode a COCO segmentation (compressed or list RLE, or polygons) to a bool (H, W) mask."""
    if isinstance(segmentation, dict):
        return decode_mask(segmentation).astype(bool)
    if not isinstance(segmentation, list):
        raise EvalInputError(f"unsupported segmentation of type {type(segmentation).__name__}")
    rles = mask_utils.frPyObjects(segmentation, height, width)
    rle = mask_utils.merge(rles) if isinstance(rles, list) else rles
    return mask_utils.decode(rle).astype(bool)


def resize_nearest(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of an integer label map to ``(height, width)``."""
    if labels.shape == (height, width):
        return labels
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(labels, dtype=np.int32))
    return np.asarray(img.resize((width, height), Image.NEAREST), dtype=np.int32)


# --------------------------------------------------------------------------------------------
# Predictions


@dataclass
class PredImage:
    """One labeled image of an output."""

    image_id: int
    file_name: str
    width: int
    height: int
    annotations: list[dict[str, Any]] = field(default_factory=list)
    #: the source URI (``file_name`` is the name relative to the image root)
    uri: str = ""


@dataclass
class ImageRecord:
    """One row of ``images.parquet``."""

    uri: str
    image_id: int | None
    status: str
    reason: str | None
    width: int | None
    height: int | None
    n_annotations: int | None


@dataclass
class Predictions:
    """The content of a prediction source that evaluation and preview need.

    ``images`` and ``records`` hold one small entry per image; annotations are not kept in
    memory but streamed by :meth:`annotated` (a run's output: shard by shard).

    Attributes:
        stream: ``stream(image_ids)`` yields the labeled images among ``image_ids`` with their
            annotations, in ascending image id order.
        reader: the run output's reader (None for predictions from a plain COCO file).
    """

    uri: str
    images: dict[int, PredImage]
    categories: dict[int, dict[str, Any]]
    records: list[ImageRecord]
    stream: Callable[[Iterable[int]], Iterator[PredImage]]
    reader: OutputReader | None = None

    @property
    def is_class_agnostic(self) -> bool:
        """True for DiffSeg-style outputs: exactly one category, named ``segment``."""
        cats = list(self.categories.values())
        return len(cats) == 1 and _norm(cats[0].get("name", "")) == UNNAMED

    def annotated(self, image_ids: Iterable[int]) -> Iterator[PredImage]:
        """The labeled images among ``image_ids`` with their COCO annotations (ascending ``id``),
        in ascending image id order."""
        return self.stream(image_ids)


def _image_record(row: dict[str, Any]) -> ImageRecord:
    return ImageRecord(uri=row["uri"], image_id=int(row["image_id"]), status=row["status"],
                       reason=row["reason"], width=row["width"], height=row["height"],
                       n_annotations=row["n_annotations"])


def load_predictions(output_uri: str, storage_options: dict | None = None) -> Predictions:
    """Open an output folder (any fsspec URI) for evaluation or preview.

    Image rows come from ``images.parquet``, categories from the output's recorded metadata;
    annotations stay on storage until :meth:`Predictions.annotated` streams them.

    Args:
        output_uri: the ``--output`` of a run.
        storage_options: fsspec options (endpoint, credentials) for the output folder.

    Raises:
        EvalInputError: ``output_uri`` is not a finished labeler output.
    """
    try:
        reader = OutputReader.open(Folder(output_uri, storage_options))
    except OutputReadError as error:
        raise EvalInputError(str(error)) from None
    images: dict[int, PredImage] = {}
    records: list[ImageRecord] = []
    for row in reader.image_rows():
        record = _image_record(row)
        records.append(record)
        if record.status == IMAGE_STATUS_LABELED:
            images[int(row["image_id"])] = PredImage(
                image_id=int(row["image_id"]), file_name=row["file_name"] or row["uri"],
                width=int(row["width"]), height=int(row["height"]), uri=row["uri"],
            )

    def stream(image_ids: Iterable[int]) -> Iterator[PredImage]:
        for output_image in reader.images(image_ids):
            if not output_image.is_labeled:
                continue
            image = images[output_image.image_id]
            yield PredImage(image.image_id, image.file_name, image.width, image.height,
                            [coco_annotation(row) for row in output_image.annotations], image.uri)

    categories = {int(c["id"]): c for c in reader.categories}
    return Predictions(uri=output_uri, images=images, categories=categories, records=records,
                       stream=stream, reader=reader)


def _paint_order(annotations: list[dict[str, Any]]) -> list[int]:
    """Indices of ``annotations`` in painting order: ascending (score, id), best painted last."""
    keys = [
        (float(a.get("score", 1.0) or 0.0), int(a.get("id", i)), i)
        for i, a in enumerate(annotations)
    ]
    return [k[2] for k in sorted(keys)]


def rasterize_segments(image: PredImage) -> np.ndarray:
    """Segment-index label map (int32, original size) of a class-agnostic prediction.

    The label is the rank of the annotation in ascending ``id`` order; unannotated pixels are
    ``VOID``.
    """
    labels = np.full((image.height, image.width), VOID, dtype=np.int32)
    for index in _paint_order(image.annotations):
        mask = decode_segmentation(
            image.annotations[index]["segmentation"], image.height, image.width
        )
        labels[mask] = index
    return labels


def rasterize_classes(
    image: PredImage, category_to_class: dict[int, int], background: int | None,
    unnamed: frozenset[int] = frozenset(),
) -> np.ndarray:
    """Class-index label map (int32, original size) of a class-aware prediction.

    Args:
        image: the labeled image.
        category_to_class: predicted category id -> ground-truth class index; categories not in
            it are painted ``VOID``.
        background: class index of unannotated pixels, or None to leave them ``VOID``.
        unnamed: category ids whose annotations are not painted (their pixels stay unannotated).
    """
    fill = VOID if background is None else background
    labels = np.full((image.height, image.width), fill, dtype=np.int32)
    for index in _paint_order(image.annotations):
        ann = image.annotations[index]
        if int(ann["category_id"]) in unnamed:
            continue
        mask = decode_segmentation(ann["segmentation"], image.height, image.width)
        labels[mask] = category_to_class.get(int(ann["category_id"]), VOID)
    return labels


# --------------------------------------------------------------------------------------------
# Ground truth


def _norm(name: str) -> str:
    return " ".join(str(name).strip().casefold().split())


def parse_classes(text: str, filename: str = "") -> list[str]:
    """Parse a class-names file: index in the list = label value.

    Accepted: a text file with one name per line (line i names label i; blank lines and lines
    starting with ``#`` are skipped), a JSON list of names, a JSON object ``{"0": "background"}``
    (value -> name) or ``{"background": 0}`` (name -> value). Gaps are named ``class_<i>``.
    """
    import json

    stripped = text.strip()
    if filename.lower().endswith(".json") or stripped.startswith(("[", "{")):
        data = json.loads(stripped)
        if isinstance(data, list):
            return [str(x) for x in data]
        if isinstance(data, dict):
            pairs: dict[int, str] = {}
            for k, v in data.items():
                if isinstance(v, int) or (
                    isinstance(v, str) and v.isdigit() and not str(k).isdigit()
                ):
                    pairs[int(v)] = str(k)
                else:
                    pairs[int(k)] = str(v)
            n = max(pairs) + 1 if pairs else 0
            return [pairs.get(i, f"class_{i}") for i in range(n)]
        raise EvalInputError("classes JSON must be a list or an object")
    return [
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


def resolve_classes(spec: str | None, storage_options: dict | None = None) -> list[str] | None:
    """``--classes`` value: a comma-separated list of names, or a URI of a classes file."""
    if not spec:
        return None
    if "," not in spec and path_kind(spec, storage_options=storage_options) is not None:
        return parse_classes(read_file(spec, storage_options).decode("utf-8"), spec)
    return [s.strip() for s in spec.split(",")]


@dataclass
class GroundTruth:
    """Ground truth, either a COCO instances file or a folder of label maps."""

    uri: str
    kind: str
    """``coco`` or ``labelmaps``."""
    classes: list[str] | None
    """Class names by index (None for label maps without names)."""
    num_classes: int | None
    """K; None for label maps until determined (see ``determine_num_classes``)."""
    background: int | None
    """Class index of background (0 for COCO ground truth; by name, else 0, for label maps)."""
    coco: dict[str, Any] | None = None
    category_to_class: dict[int, int] = field(default_factory=dict)
    """COCO ground truth: GT category id -> class index."""
    files: dict[str, str] = field(default_factory=dict)
    """Label maps: stem -> URI."""
    coco_images: dict[int, dict[str, Any]] = field(default_factory=dict)
    coco_annotations: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    ignore_index: int = 255
    storage_options: dict | None = None
    """fsspec options for reading the label maps."""

    def class_name(self, index: int) -> str:
        """Display name of a class index."""
        if self.classes is not None and index < len(self.classes):
            return self.classes[index]
        return f"class_{index}"


def load_ground_truth(
    uri: str,
    classes: list[str] | None = None,
    ignore_index: int = 255,
    storage_options: dict | None = None,
) -> GroundTruth:
    """Open ground truth at ``uri``: a COCO ``.json`` file or a folder of label maps."""
    kind = path_kind(uri, storage_options=storage_options)
    if kind is None:
        raise EvalInputError(f"ground truth not found: {uri}")
    if kind != "directory":
        if not uri.lower().endswith(".json"):
            raise EvalInputError(
                f"ground truth must be a COCO .json file or a folder of label maps: {uri}"
            )
        return _load_coco_gt(uri, ignore_index, storage_options)
    files: dict[str, str] = {}
    duplicates: set[str] = set()
    for path in list_files(uri, LABEL_MAP_EXTENSIONS, storage_options=storage_options):
        key = uri_stem(path)
        if key in files:
            duplicates.add(key)
        files[key] = path
    if duplicates:
        raise EvalInputError(
            f"ground-truth label maps share file stems, pairing would be ambiguous: {sorted(duplicates)[:10]}"
        )
    if not files:
        raise EvalInputError(f"no label maps (.png, .npy) under {uri}")
    if classes is None:
        folder = Folder(uri, storage_options)
        for name in CLASSES_FILES:
            if folder.exists(name):
                classes = parse_classes(folder.read_bytes(name).decode("utf-8"), name)
                break
    background = None
    if classes is not None:
        names = [_norm(c) for c in classes]
        background = names.index("background") if "background" in names else 0
    return GroundTruth(
        uri=uri,
        kind="labelmaps",
        classes=classes,
        num_classes=len(classes) if classes is not None else None,
        background=background if background is not None else 0,
        files=files,
        ignore_index=ignore_index,
        storage_options=storage_options,
    )


def _load_coco_gt(uri: str, ignore_index: int, storage_options: dict | None) -> GroundTruth:
    coco = json.loads(read_file(uri, storage_options))
    cats = sorted(coco.get("categories", []), key=lambda c: int(c["id"]))
    classes = ["background"]
    mapping: dict[int, int] = {}
    for cat in cats:
        if _norm(cat.get("name", "")) == "background":
            mapping[int(cat["id"])] = 0
        else:
            mapping[int(cat["id"])] = len(classes)
            classes.append(str(cat.get("name", f"category_{cat['id']}")))
    images = {int(im["id"]): im for im in coco.get("images", [])}
    anns: dict[int, list[dict[str, Any]]] = {i: [] for i in images}
    for ann in coco.get("annotations", []):
        anns.setdefault(int(ann["image_id"]), []).append(ann)
    return GroundTruth(
        uri=uri,
        kind="coco",
        classes=classes,
        num_classes=len(classes),
        background=0,
        coco=coco,
        category_to_class=mapping,
        coco_images=images,
        coco_annotations=anns,
        ignore_index=ignore_index,
    )


def _decode_label_file(data: bytes, name: str) -> np.ndarray:
    if name.lower().endswith(".npy"):
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    else:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as img:
            if img.mode in ("RGB", "RGBA", "LA"):
                img = img.getchannel(0)
            arr = np.asarray(img)
    if arr.ndim == 3:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise EvalInputError(f"label map {name} is not 2-D (shape {arr.shape})")
    return arr.astype(np.int32)


def load_label_map(gt: GroundTruth, key: Any) -> np.ndarray:
    """Ground-truth label map for a pairing key; ignored pixels are ``IGNORE`` (-1).

    ``key`` is a file stem (label maps) or a GT image id (COCO).
    """
    if gt.kind == "labelmaps":
        uri = gt.files[key]
        labels = _decode_label_file(read_file(uri, gt.storage_options), uri)
        labels[(labels == gt.ignore_index) | (labels < 0)] = IGNORE
        return labels
    return classes_of_instances(*load_instance_map(gt, key))


def classes_of_instances(instances: np.ndarray, row_class: np.ndarray) -> np.ndarray:
    """Class label map (int32, ``IGNORE`` kept) of an instance map from ``load_instance_map``."""
    return np.where(instances >= 0, row_class[np.maximum(instances, 0)], IGNORE).astype(np.int32)


def load_instance_map(gt: GroundTruth, key: Any) -> tuple[np.ndarray, np.ndarray]:
    """Instance label map of a COCO ground-truth image.

    Returns ``(instances, row_class)``: ``instances`` is an int32 ``(H, W)`` map where 0 is
    background (unannotated pixels), ``i >= 1`` the i-th evaluated instance (non-crowd, known
    category, largest painted first so smaller instances stay visible on overlaps) and
    ``IGNORE`` the crowd regions; ``row_class`` (``n_instances + 1``,) gives the class index of
    each label (``row_class[0]`` is the background class).
    """
    if gt.kind != "coco":
        raise EvalInputError("instance maps need COCO ground truth")
    image = gt.coco_images[int(key)]
    h, w = int(image["height"]), int(image["width"])
    background = gt.background if gt.background is not None else 0
    instances = np.zeros((h, w), dtype=np.int32)
    row_class = [background]
    anns = gt.coco_annotations.get(int(key), [])
    things = [a for a in anns if not a.get("iscrowd", 0)]
    crowds = [a for a in anns if a.get("iscrowd", 0)]
    things.sort(key=lambda a: -float(a.get("area", 0) or 0))
    for ann in things:
        cls = gt.category_to_class.get(int(ann["category_id"]))
        if cls is None:
            continue
        if cls == background:
            # a GT category named background is background, not an instance
            instances[decode_segmentation(ann["segmentation"], h, w)] = 0
            continue
        instances[decode_segmentation(ann["segmentation"], h, w)] = len(row_class)
        row_class.append(cls)
    for ann in crowds:
        instances[decode_segmentation(ann["segmentation"], h, w)] = IGNORE
    return instances, np.asarray(row_class, dtype=np.int64)


def determine_num_classes(gt: GroundTruth, keys: Iterable[Any]) -> int:
    """K for label-map ground truth without class names: ``max(label) + 1`` over ``keys``.

    This reads the paired label maps once more; pass ``--num-classes`` or a classes file to
    avoid the extra pass.
    """
    top = -1
    for key in keys:
        labels = load_label_map(gt, key)
        valid = labels[labels >= 0]
        if valid.size:
            top = max(top, int(valid.max()))
    return top + 1


# --------------------------------------------------------------------------------------------
# Pairing


@dataclass
class Pairing:
    """Prediction image ids paired with ground-truth keys, and what could not be paired."""

    pairs: list[tuple[int, Any]]
    """(predicted image id, ground-truth key) in predicted image id order."""
    predictions_without_gt: list[str]
    gt_without_prediction: list[str]
    ambiguous: list[str]


def _index(items: Iterable[tuple[str, Any]]) -> tuple[dict[str, Any], set[str]]:
    out: dict[str, Any] = {}
    dup: set[str] = set()
    for key, value in items:
        if key in out and out[key] != value:
            dup.add(key)
        out[key] = value
    for key in dup:
        out.pop(key, None)
    return out, dup


def pair_images(preds: Predictions, gt: GroundTruth) -> Pairing:
    """Pair labeled prediction images with ground truth.

    * label-map folder: by file stem of the predicted ``file_name``;
    * COCO file: by exact ``file_name``, else by base name, else by stem (a key shared by
      several ground-truth images is not used at that level).
    """
    pairs: list[tuple[int, Any]] = []
    unpaired: list[str] = []
    ambiguous: set[str] = set()
    used: set[Any] = set()
    if gt.kind == "labelmaps":
        by_stem: dict[str, list[int]] = {}
        for image in preds.images.values():
            by_stem.setdefault(uri_stem(image.file_name), []).append(image.image_id)
        for image_id in sorted(preds.images):
            image = preds.images[image_id]
            key = uri_stem(image.file_name)
            if len(by_stem[key]) > 1:
                ambiguous.add(image.file_name)
            elif key in gt.files:
                pairs.append((image_id, key))
                used.add(key)
            else:
                unpaired.append(image.file_name)
        missing = [gt.files[k] for k in sorted(gt.files) if k not in used]
        return Pairing(pairs, unpaired, missing, sorted(ambiguous))
    levels = []
    for fn in (lambda s: s, posixpath.basename, uri_stem):
        index, dup = _index(
            (fn(str(im.get("file_name", ""))), i) for i, im in gt.coco_images.items()
        )
        levels.append((fn, index, dup))
    for image_id in sorted(preds.images):
        image = preds.images[image_id]
        found = None
        for fn, index, dup in levels:
            key = fn(image.file_name)
            if key in index and index[key] not in used:
                found = index[key]
                break
            if key in dup:
                ambiguous.add(image.file_name)
        if found is None:
            unpaired.append(image.file_name)
        else:
            pairs.append((image_id, found))
            used.add(found)
    missing = [
        str(gt.coco_images[i].get("file_name", i)) for i in sorted(gt.coco_images) if i not in used
    ]
    return Pairing(pairs, unpaired, missing, sorted(ambiguous))


# --------------------------------------------------------------------------------------------
# Category -> class mapping


@dataclass
class ClassMapping:
    """How predicted categories map to ground-truth class indices."""

    rule: str
    """``name`` or ``id``."""
    category_to_class: dict[int, int]
    unmapped: list[str]
    """Predicted categories without a ground-truth class (their pixels count as void)."""
    unnamed: frozenset[int] = frozenset()
    """Ids of the ``segment`` category of a named DiffSeg run (segments no name explains): their
    pixels count as unannotated (background, or void with ``--unannotated void``)."""


def build_class_mapping(preds: Predictions, gt: GroundTruth, rule: str = "auto") -> ClassMapping:
    """Map predicted category ids to ground-truth class indices.

    * ``name``: case- and whitespace-insensitive equality of the predicted category name and the
      ground-truth class name (COCO category names, or the label-map class names).
    * ``id``: label-map ground truth: class index = predicted ``category_id``; COCO ground
      truth: the GT category with the same id.
    * ``auto``: ``name`` when the ground truth has class names (COCO always; label maps with a
      classes file or ``--classes``), else ``id``.

    Under either rule a category named ``segment`` (:data:`UNNAMED`) that matches no
    ground-truth class by name is *unnamed* (``ClassMapping.unnamed``): a named DiffSeg run's
    segments that no name explains, scored as unannotated pixels, never as a class.

    Raises ``EvalInputError`` when the name rule maps no category (``segment`` aside) to a class.
    """
    if rule == "auto":
        rule = "name" if gt.classes is not None else "id"
    mapping: dict[int, int] = {}
    unmapped: list[str] = []
    by_name: dict[str, int] = {}
    for index, name in enumerate(gt.classes or []):
        by_name.setdefault(_norm(name), index)
    unnamed = frozenset(
        cid for cid, cat in preds.categories.items()
        if _norm(cat.get("name", "")) == UNNAMED and UNNAMED not in by_name
    )
    named = {cid: cat for cid, cat in sorted(preds.categories.items()) if cid not in unnamed}
    if rule == "name":
        if gt.classes is None:
            raise EvalInputError(
                "--class-match name needs class names: pass --classes or add classes.txt to the GT folder"
            )
        for cid, cat in named.items():
            index = by_name.get(_norm(cat.get("name", "")))
            if index is None:
                unmapped.append(str(cat.get("name", cid)))
            else:
                mapping[cid] = index
        if preds.categories and not mapping:
            raise EvalInputError(
                "no predicted category name matches a ground-truth class "
                f"(predicted: {sorted(str(c.get('name')) for c in preds.categories.values())[:10]}, "
                f"ground truth: {gt.classes[:10]}); use --class-match id or --classes"
            )
    elif rule == "id":
        for cid, cat in named.items():
            if gt.kind == "coco":
                index = gt.category_to_class.get(cid)
            else:
                index = cid if cid >= 0 else None
            if index is None or (gt.num_classes is not None and index >= gt.num_classes):
                unmapped.append(str(cat.get("name", cid)))
            else:
                mapping[cid] = index
    else:
        raise EvalInputError(f"unknown --class-match rule {rule!r}")
    return ClassMapping(rule=rule, category_to_class=mapping, unmapped=unmapped, unnamed=unnamed)


@dataclass
class EvalPair:
    """One paired image at ground-truth resolution."""

    image_id: int
    gt_labels: np.ndarray
    """(H, W) int32 ground-truth class indices, ``IGNORE`` where not evaluated."""
    pred_labels: np.ndarray
    """(H, W) int32 predicted labels (segment or class indices), ``VOID`` where unannotated."""
    gt_instances: np.ndarray | None = None
    """(H, W) int32 instance labels (see ``load_instance_map``), COCO ground truth only."""
    instance_class: np.ndarray | None = None
    """(n_instances + 1,) class index of each instance label, with ``gt_instances``."""


def iter_pairs(
    preds: Predictions,
    gt: GroundTruth,
    pairs: list[tuple[int, Any]],
    mode: str,
    mapping: ClassMapping | None = None,
    unannotated: str = "background",
    instances: bool = False,
) -> Iterator[EvalPair]:
    """Yield the paired images (``EvalPair``) at ground-truth resolution.

    Args:
        mode: ``segments`` (segment-index predictions) or ``classes`` (class-index predictions).
        mapping: category mapping, required for ``classes``.
        unannotated: ``background`` or ``void``: label of unannotated pixels for ``classes``.
        instances: also give the instance map (COCO ground truth), decoded once for both maps.
    """
    keys = dict(pairs)
    for image in preds.annotated(keys):
        image_id, key = image.image_id, keys[image.image_id]
        gt_instances = instance_class = None
        if instances:
            gt_instances, instance_class = load_instance_map(gt, key)
            gt_labels = classes_of_instances(gt_instances, instance_class)
        else:
            gt_labels = load_label_map(gt, key)
        if mode == "segments":
            pred_labels = rasterize_segments(image)
        else:
            assert mapping is not None
            background = gt.background if unannotated == "background" else None
            pred_labels = rasterize_classes(image, mapping.category_to_class, background,
                                            mapping.unnamed)
        pred_labels = resize_nearest(pred_labels, *gt_labels.shape)
        yield EvalPair(image_id, gt_labels, pred_labels, gt_instances, instance_class)
