"""Label maps to COCO compressed RLE, with area and bbox taken from the mask itself."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils


@dataclass(frozen=True)
class EncodedMask:
    """One binary mask as COCO compressed RLE (JSON-safe) with its area and bbox.

    Attributes:
        counts: the compressed RLE string (pycocotools returns bytes; stored decoded as ASCII).
        height, width: the mask size (COCO ``size`` is ``[height, width]``).
        area: number of foreground pixels.
        bbox: ``[x, y, w, h]`` of the foreground, in pixels (floats, as COCO).
    """

    counts: str
    height: int
    width: int
    area: int
    bbox: list[float]

    def segmentation(self) -> dict:
        """The COCO ``segmentation`` field."""
        return {"size": [self.height, self.width], "counts": self.counts}


def encode_label_map(label_map: np.ndarray, n_labels: int) -> list[EncodedMask]:
    """Encode each label value 0..n_labels-1 of an (H, W) map as one RLE mask.

    Pixels with negative values belong to no mask. Labels that occupy no pixel still get an entry
    (area 0), so index k always describes label k.
    """
    encoded = []
    for label in range(n_labels):
        binary = np.asfortranarray(label_map == label, dtype=np.uint8)
        rle = mask_utils.encode(binary)
        encoded.append(
            EncodedMask(
                counts=rle["counts"].decode("ascii"),
                height=int(rle["size"][0]),
                width=int(rle["size"][1]),
                area=int(mask_utils.area(rle)),
                bbox=[float(value) for value in mask_utils.toBbox(rle)],
            )
        )
    return encoded
