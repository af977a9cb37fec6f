"""``README.md``: the dataset card that makes an output folder a Hugging Face dataset.

``datasets.load_dataset(OUTPUT)`` reads the card's ``configs``: ``images`` (the default,
``images.parquet``, one row per input image) and ``annotations`` (``annotations/*.parquet``, one
row per annotation); every other file of the output (``coco.json``, ``run/``) is left out, so the
loader no longer mixes JSON and Parquet. ``load_dataset(OUTPUT, "annotations")`` gives the
annotation rows. The body says what the tables hold and how to decode a mask.
"""

from __future__ import annotations

import yaml

from labeler.io.folders import Folder
from labeler.output import parts


def card_metadata() -> dict:
    """The card's YAML header: the two table configs, images the default."""
    return {
        "configs": [
            {"config_name": "images", "default": True,
             "data_files": [{"split": "train", "path": parts.MERGED_IMAGES}]},
            {"config_name": "annotations",
             "data_files": [{"split": "train", "path": f"{parts.MERGED_ANNOTATIONS_DIR}/*.parquet"}]},
        ],
        "tags": ["labeler", "pseudo-labels", "image-segmentation"],
    }


def write_dataset_card(output: Folder, categories: list[dict], info: dict, counts: dict) -> None:
    """Write ``README.md`` into a merged ``output``.

    Args:
        categories: the COCO categories.
        info: the COCO ``info`` block (its ``method`` and ``model`` are named).
        counts: :func:`labeler.output.merge.merge_outputs`'s counts (images, labeled, failed,
            annotations).
    """
    names = ", ".join(c["name"] for c in categories) or "(none)"
    body = (
        f"# labeler output ({info.get('method', '?')}, model {info.get('model', '?')})\n\n"
        f"{counts['images']} images ({counts['labeled']} labeled, {counts['failed']} failed), "
        f"{counts['annotations']} annotations; categories: {names}.\n\n"
        "```python\n"
        "import datasets\n"
        "images = datasets.load_dataset(OUTPUT, split=\"train\")                 # images.parquet\n"
        "annotations = datasets.load_dataset(OUTPUT, \"annotations\", split=\"train\")\n"
        "```\n\n"
        "- `images`: one row per input image: `uri`, `image_id`, `status` (labeled or failed), "
        "`reason`, `width`, `height`, `n_annotations`, `file_name` (relative to the image root).\n"
        "- `annotations`: one row per mask: `image_id`, `category_id`, `category_name`, "
        "`segmentation_counts` and `segmentation_size` (COCO compressed RLE: "
        "`pycocotools.mask.decode({\"size\": size, \"counts\": counts})`), `area`, `bbox`, "
        "`score`, and provenance.\n\n"
        "For a training-ready dataset (image bytes, categories as `ClassLabel`), run "
        "`labeler export OUTPUT --format hf --out DIR`.\n"
    )
    header = yaml.safe_dump(card_metadata(), sort_keys=False)
    output.write_bytes(parts.DATASET_CARD, f"---\n{header}---\n\n{body}".encode())
