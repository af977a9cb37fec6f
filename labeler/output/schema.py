"""Arrow schemas of the Parquet outputs, declared once (failure columns included)."""

from __future__ import annotations

import pyarrow as pa

IMAGE_STATUS_LABELED = "labeled"
IMAGE_STATUS_FAILED = "failed"

#: ``images.parquet``: one row per input image, labeled or failed. ``uri`` is the source,
#: ``file_name`` the name relative to the image root (:mod:`labeler.output.names`).
IMAGES = pa.schema(
    [
        ("uri", pa.string()),
        ("image_id", pa.int64()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("n_annotations", pa.int32()),
        ("shard_id", pa.string()),
        ("file_name", pa.string()),
        # failed rows: whether a re-run may label the image (labeler.output.failures); null
        # for labeled rows and for parts written before the column existed
        ("retryable", pa.bool_()),
        # labeled rows: the integer factor the decoder reduced the stored image by before the
        # method saw it (1: full size; labeler.io.decode, "Decoding what the consumer needs");
        # null for failed rows and for parts written before the column existed
        ("decode_scale", pa.int32()),
        # which version of the input was read (labeler.io.identity: etag:..., mtime:...:size:...,
        # sha256:...); null when it could not be read, and for parts written before the column
        ("input_identity", pa.string()),
    ]
)

#: ``annotations/``: one row per annotation, the COCO fields plus provenance.
ANNOTATIONS = pa.schema(
    [
        ("id", pa.int64()),
        ("image_id", pa.int64()),
        ("category_id", pa.int64()),
        ("category_name", pa.string()),
        ("segmentation_counts", pa.string()),
        ("segmentation_size", pa.list_(pa.int32(), 2)),
        ("area", pa.int64()),
        ("bbox", pa.list_(pa.float64(), 4)),
        ("iscrowd", pa.int8()),
        ("score", pa.float64()),
        ("file_name", pa.string()),
        ("method", pa.string()),
        ("model", pa.string()),
        # the digest of the method's own resource (SLiMe's embedding set, DiffewS's support
        # set), null for methods without one; parts written before were named embedding_set
        ("resource_digest", pa.string()),
        ("run_id", pa.string()),
        # how well the category name explains the annotation (DiffSeg with names); null
        # otherwise and for parts written before the column existed
        ("name_score", pa.float64()),
    ]
)
