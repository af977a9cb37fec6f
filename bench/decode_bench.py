"""Decoding what the method needs (issue 27): its cost, and the change in labels it causes.

``--timing``: process CPU ms per image to decode JPEGs (and PNGs) at full size (before, what
``--no-draft-decode`` does) and reduced to the method's 512 px input (after, the default), alone
and followed by the method's resize to its 512 x 512 input (``images_to_model_input``,
antialiased), over ``--distinct`` different photos per size; the load average printed beside
every figure. With ``--pillow`` each figure is also taken with JPEG pixels decoded by Pillow
(``pillow_*_ms``: :mod:`labeler.io.jpeg`'s libjpeg-turbo path switched off, the decoder before
it), interleaved with the default decoder's, so the two meet the same load.

``--labels``: the labels full-size and reduced decoding give, on the offline ``tiny`` model
(input side 512): DiffSeg (defaults) ARI between the two label maps and against the true
regions, SLiMe pixel agreement between the two and mIoU against the truth (an embedding set fit
here on one world), on the synthetic worlds (:mod:`labeler.testing.worlds`) and on the bundled
photos (``labeler/data/samples``), each at its own size and enlarged (JPEG, quality 92) so
that the decoder reduces it. Labels are compared at the stored size, as ``labeler run``
reports them (the reduced map scaled back, nearest).

    python bench/decode_bench.py --timing --sizes 1024x768,4032x3024
    python bench/decode_bench.py --timing --formats JPEG --pillow
    python bench/decode_bench.py --labels --worlds 3 --enlarge 4
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

from labeler.io import jpeg
from labeler.io.decode import decode_image
from labeler.methods.label_maps import resize_labels
from labeler.methods.preprocess import images_to_model_input
from labeler.testing.worlds import SLIME_CLASSES, adjusted_rand_index, region_world, slime_world

SAMPLES = Path(__file__).resolve().parents[1] / "labeler" / "data" / "samples"
SIDE = 512


def sample_paths() -> list[Path]:
    """The bundled photos."""
    return sorted(path for path in SAMPLES.iterdir() if path.suffix in (".jpg", ".png", ".webp"))


def load() -> str:
    return "load " + " ".join(f"{value:.2f}" for value in os.getloadavg())


def encode(pixels: np.ndarray, fmt: str, quality: int = 92) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def photos(width: int, height: int, count: int, fmt: str) -> list[bytes]:
    """``count`` different photo-like images: the bundled photos resized, shifted and noised."""
    sources = [np.asarray(Image.open(path).convert("RGB")) for path in sample_paths()]
    rng = np.random.default_rng(width)
    out = []
    for index in range(count):
        source = Image.fromarray(sources[index % len(sources)])
        crop = source.crop((index % 7, index % 5, source.width - index % 3, source.height))
        pixels = np.asarray(crop.resize((width, height), Image.Resampling.BICUBIC)).astype(np.int16)
        pixels += rng.integers(-6, 7, pixels.shape, dtype=np.int16)
        out.append(encode(np.clip(pixels, 0, 255).astype(np.uint8), fmt))
    return out


@contextlib.contextmanager
def pillow_decoding():
    """JPEG pixels decoded by Pillow, as before the libjpeg-turbo path (which gives the same)."""
    turbo = jpeg.decode_rgb
    jpeg.decode_rgb = lambda *args: None
    try:
        yield
    finally:
        jpeg.decode_rgb = turbo


def cpu_ms(files: list[bytes], side: int | None, resize: bool, repeat: int) -> float:
    started = time.process_time()
    for _ in range(repeat):
        for data in files:
            pixels = decode_image(data, needed_side=side, max_decoded_pixels=4096 * 4096).pixels
            if resize:
                images_to_model_input([pixels], SIDE)
    return 1000 * (time.process_time() - started) / (repeat * len(files))


def timing(sizes: list[tuple[int, int]], formats: list[str], distinct: int, repeat: int,
           pillow: bool = False) -> list:
    rows = []
    decoders = (("", contextlib.nullcontext),) + ((("pillow_", pillow_decoding),) if pillow else ())
    for fmt in formats:
        for width, height in sizes:
            files = photos(width, height, distinct, fmt)
            scale = decode_image(files[0], needed_side=SIDE).scale
            for resize in (False, True):
                row = {"format": fmt, "size": f"{width}x{height}", "decode_scale": scale,
                       "with_model_resize": resize}
                for name, side in (("full_ms", None), ("reduced_ms", SIDE)):
                    for prefix, decoding in decoders:
                        with decoding():
                            cpu_ms(files[:2], side, resize, 1)  # warm up
                            row[prefix + name] = round(cpu_ms(files, side, resize, repeat), 2)
                        row[prefix + name.replace("_ms", "_load")] = load()
                row["speedup"] = round(row["full_ms"] / row["reduced_ms"], 2)
                if pillow:
                    row["turbo_speedup"] = round(row["pillow_reduced_ms"] / row["reduced_ms"], 2)
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def decoded_pair(data: bytes) -> tuple[np.ndarray, np.ndarray, int]:
    """Full-size pixels, reduced pixels, the reduction's scale."""
    full = decode_image(data).pixels
    reduced = decode_image(data, needed_side=SIDE)
    return full, reduced.pixels, reduced.scale


def diffseg_maps(segmenter, full: np.ndarray, reduced: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    height, width = full.shape[:2]
    maps = [segmenter.label([image])[0].resized(height, width).label_map
            for image in (full, reduced)]
    return maps[0], maps[1]


def slime_maps(segmenter, full: np.ndarray, reduced: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    height, width = full.shape[:2]
    return (segmenter.predict([full])[0][0],
            resize_labels(segmenter.predict([reduced])[0][0].astype(np.int32), height, width))


def enlarged(pixels: np.ndarray, factor: int, nearest: bool = False) -> np.ndarray:
    image = Image.fromarray(pixels)
    size = (image.width * factor, image.height * factor)
    return np.asarray(image.resize(size, Image.Resampling.NEAREST if nearest
                                   else Image.Resampling.LANCZOS))


def labels(worlds: int, factor: int, epochs: int) -> list:
    import torch

    from labeler.methods.annotations import AnnotatedImage
    from labeler.methods.diffseg.segmenter import DiffSeg
    from labeler.methods.slime.algorithm import mean_iou_present
    from labeler.methods.slime.fit import FitSettings, fit_embedding_set
    from labeler.methods.slime.segmenter import Slime
    from labeler.models.backbone import load_backbone

    backbone = load_backbone("tiny", device="cpu", dtype=torch.float32)
    diffseg = DiffSeg(backbone)
    image, mask = slime_world(np.random.default_rng(100), SIDE)
    fitted = fit_embedding_set(backbone, [AnnotatedImage("one", image, mask, "0" * 16)],
                               SLIME_CLASSES, FitSettings(epochs=epochs, fit_size=256, seed=0),
                               progress=False)
    slime = Slime(backbone, fitted, seed=0)
    rows = []

    def record(kind: str, name: str, method: str, data: bytes, truth, segmenter, maps) -> None:
        full, reduced, scale = decoded_pair(data)
        a, b = maps(segmenter, full, reduced)
        row = {"set": kind, "image": name, "method": method, "size": f"{full.shape[1]}x{full.shape[0]}",
               "decode_scale": scale, "identical": bool(np.array_equal(a, b))}
        if method == "diffseg":
            row["ari_reduced_vs_full"] = round(adjusted_rand_index(b, a), 4)
            if truth is not None:
                row["ari_truth_full"] = round(adjusted_rand_index(a, truth), 4)
                row["ari_truth_reduced"] = round(adjusted_rand_index(b, truth), 4)
        else:
            row["agreement"] = round(float(np.mean(a == b)), 4)
            if truth is not None:
                k = len(SLIME_CLASSES)
                row["miou_full"] = round(mean_iou_present(a, truth, k), 4)
                row["miou_reduced"] = round(mean_iou_present(b, truth, k), 4)
        rows.append(row)
        print(json.dumps(row), flush=True)

    for seed in range(worlds):
        pixels, truth = region_world(np.random.default_rng(seed), SIDE)
        for grow in (1, factor):
            big, big_truth = enlarged(pixels, grow), enlarged(truth.astype(np.uint8), grow, True)
            record("world", f"region-{seed}x{grow}", "diffseg", encode(big, "JPEG"), big_truth,
                   diffseg, diffseg_maps)
        pixels, truth = slime_world(np.random.default_rng(seed), SIDE)
        for grow in (1, factor):
            big, big_truth = enlarged(pixels, grow), enlarged(truth.astype(np.uint8), grow, True)
            record("world", f"slime-{seed}x{grow}", "slime", encode(big, "JPEG"), big_truth,
                   slime, slime_maps)
    for path in sample_paths():
        pixels = np.asarray(Image.open(path).convert("RGB"))
        for grow in (1, factor):
            data = path.read_bytes() if grow == 1 else encode(enlarged(pixels, grow), "JPEG")
            for method, segmenter, maps in (("diffseg", diffseg, diffseg_maps),
                                            ("slime", slime, slime_maps)):
                record("photo", f"{path.name}x{grow}", method, data, None, segmenter, maps)
    diffseg.close()
    slime.close()
    return rows


def summary(rows: list) -> dict:
    """Means per set, method and whether the image was reduced."""
    out = {}
    for row in rows:
        key = f"{row['set']}/{row['method']}/{'reduced' if row['decode_scale'] > 1 else 'full size'}"
        entry = out.setdefault(key, {"images": 0})
        entry["images"] += 1
        for name, value in row.items():
            if isinstance(value, float):
                entry.setdefault(name, []).append(value)
    return {key: {name: (round(float(np.mean(v)), 4) if isinstance(v, list) else v)
                  for name, v in entry.items()} for key, entry in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timing", action="store_true")
    parser.add_argument("--labels", action="store_true")
    parser.add_argument("--sizes", default="1024x768,4032x3024")
    parser.add_argument("--formats", default="JPEG,PNG")
    parser.add_argument("--distinct", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pillow", action="store_true",
                        help="also time JPEGs decoded by Pillow (the libjpeg-turbo path off)")
    parser.add_argument("--worlds", type=int, default=3)
    parser.add_argument("--enlarge", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=20, help="SLiMe fit epochs (the set used)")
    args = parser.parse_args()
    if args.timing:
        sizes = [tuple(int(v) for v in size.split("x")) for size in args.sizes.split(",")]
        timing(sizes, args.formats.split(","), args.distinct, args.repeat, args.pillow)
    if args.labels:
        print(json.dumps({"summary": summary(labels(args.worlds, args.enlarge, args.epochs)),
                          "load": load()}), flush=True)


if __name__ == "__main__":
    main()
