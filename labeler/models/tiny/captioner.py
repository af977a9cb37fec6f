"""The tiny captioner: a seeded BLIP, built offline, that captions colour worlds with their colours.

It uses the real transformers classes (``BlipForConditionalGeneration``, ``BlipProcessor`` with a
``BlipImageProcessor`` and a ``BertTokenizer``) at tiny sizes: 32x32 images in 8x8 patches, one
vision layer, two text-decoder layers, a vocabulary of the special tokens, ``and`` and the six
colour words of :data:`labeler.models.tiny.names.COLOUR_NAMES`. It is built once from a fixed seed
and saved with ``save_pretrained`` under the cache folder, then loaded through the same code as any
captioner folder (:mod:`labeler.models.captioner`).

Calibration (a short deterministic fit, seconds on a CPU): on procedural images (flat shapes of
the six named colours and of white, grey and black, as the synthetic naming worlds are), the
caption is the named colours that cover at least :data:`MIN_SHARE` of the image, in the order of
``COLOUR_NAMES``, joined by ``and`` (``"red and blue"``); no named colour gives an empty caption.
Each colour word is then a noun phrase of its own, so the documented noun rule
(:mod:`labeler.methods.diffseg.captions`) takes every colour word as a noun.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from labeler.models.tiny.model import staged_folder
from labeler.models.tiny.names import COLOUR_NAMES

logger = logging.getLogger(__name__)

CAPTIONER_SEED = 20240202
CAPTIONER_VERSION = 1
#: Colours that no word names (the naming worlds' distractors).
UNNAMED_COLOURS = ((245, 245, 240), (128, 128, 128), (25, 25, 30))
#: A colour is in an image's caption when it covers at least this share of the image.
MIN_SHARE = 0.04
#: The tokenizer's words: BERT's specials, BLIP's decoder start ``[DEC]``, ``and``, the colours.
VOCABULARY = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "and", *COLOUR_NAMES)
IMAGE_SIZE = 32
VISION_CONFIG = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "projection_dim": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "image_size": IMAGE_SIZE,
    "patch_size": 8,
}
TEXT_CONFIG = {
    "vocab_size": len(VOCABULARY),
    "hidden_size": 32,
    "encoder_hidden_size": 32,
    "intermediate_size": 64,
    "projection_dim": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "max_position_embeddings": 16,
    "pad_token_id": VOCABULARY.index("[PAD]"),
    "bos_token_id": VOCABULARY.index("[DEC]"),
    "eos_token_id": VOCABULARY.index("[SEP]"),
    "sep_token_id": VOCABULARY.index("[SEP]"),
}
#: The fit: procedural images, Adam steps, images per step, learning rate; the images' side.
FIT_POOL = 1536
FIT_STEPS = 800
FIT_BATCH = 48
FIT_LR = 3e-3
WORLD_SIDE = 64


def settings() -> dict:
    """Every constant of the tiny captioner: its cache key."""
    return {name: value for name, value in globals().items() if name.isupper()}


def tiny_captioner_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the tiny captioner lives (``save_pretrained`` layout); built on first use, atomically."""
    root = Path(cache_dir or os.environ.get("LABELER_CACHE", Path.home() / ".cache" / "labeler"))
    blob = json.dumps([settings(), torch.__version__], sort_keys=True, default=str)
    target = root / "models" / f"tiny-captioner-v{CAPTIONER_VERSION}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"
    if not (target / "config.json").exists():
        _build_into(target)
    return target


def caption_of(colour_shares: dict[str, float]) -> str:
    """The caption the tiny captioner is fitted to give an image with these colour shares."""
    present = [name for name in COLOUR_NAMES if colour_shares.get(name, 0.0) >= MIN_SHARE]
    return " and ".join(present)


def fit_worlds(rng: np.random.Generator, count: int) -> tuple[list[np.ndarray], list[str]]:
    """Procedural fitting images: a ground and 1-3 rectangles or ellipses of distinct colours
    (named or not), as the synthetic naming worlds are.

    Returns:
        ``count`` (WORLD_SIDE, WORLD_SIDE, 3) uint8 RGB images and their captions
        (:func:`caption_of`).
    """
    palette = np.array([*COLOUR_NAMES.values(), *UNNAMED_COLOURS], np.float64)
    side = WORLD_SIDE
    order = rng.random((count, len(palette))).argsort(1)
    shapes = rng.integers(1, 4, count)
    colour = np.repeat(order[:, :1, None], side, 1).repeat(side, 2)  # (count, side, side)
    yy, xx = np.mgrid[:side, :side] / side
    for slot in range(1, 4):
        centre = rng.uniform(0.1, 0.9, (count, 2, 1, 1))
        radius = rng.uniform(0.08, 0.35, (count, 2, 1, 1))
        dy, dx = (yy - centre[:, 0]) / radius[:, 0], (xx - centre[:, 1]) / radius[:, 1]
        box = np.maximum(np.abs(dy), np.abs(dx)) <= 1.0
        ellipse = dy**2 + dx**2 <= 1.0
        mask = np.where(rng.integers(0, 2, (count, 1, 1)) == 1, box, ellipse)
        mask &= (shapes >= slot)[:, None, None]
        colour = np.where(mask, order[:, slot, None, None], colour)
    jitter = rng.uniform(-12, 12, (count, len(palette), 3))
    image = np.take_along_axis(palette[None] + jitter, colour.reshape(count, -1, 1), 1)
    image = image.reshape(count, side, side, 3) + rng.normal(0, 4, (count, side, side, 3))
    images = list(np.clip(image, 0, 255).astype(np.uint8))
    names = list(COLOUR_NAMES)
    captions = [caption_of({name: float((world == i).mean()) for i, name in enumerate(names)})
                for world in colour]
    return images, captions


def _caption_ids(captions: list[str]) -> torch.Tensor:
    """(B, T) token ids of captions of :data:`VOCABULARY` words: ``[DEC] words [SEP]``, padded."""
    rows = [[VOCABULARY.index("[DEC]"), *(VOCABULARY.index(w) for w in c.split()), VOCABULARY.index("[SEP]")]
            for c in captions]
    ids = torch.full((len(rows), max(map(len, rows))), VOCABULARY.index("[PAD]"))
    for row, tokens in zip(ids, rows):
        row[: len(tokens)] = torch.tensor(tokens)
    return ids


def _fit(model, image_processor, seed: int) -> None:
    """Teach ``model`` the captions of :func:`fit_worlds` images (teacher forcing, Adam), the
    images passed through the captioner's own image processor once."""
    rng = np.random.default_rng(seed)
    images, captions = fit_worlds(rng, FIT_POOL)
    pixels = image_processor(images=images, return_tensors="pt").pixel_values
    ids = _caption_ids(captions)
    pad = ids == VOCABULARY.index("[PAD]")
    optimiser = torch.optim.Adam(model.parameters(), lr=FIT_LR)
    model.train()
    for _ in range(FIT_STEPS):
        batch = torch.from_numpy(rng.integers(0, FIT_POOL, FIT_BATCH))
        loss = model(pixel_values=pixels[batch], input_ids=ids[batch],
                     attention_mask=(~pad[batch]).long(), labels=ids[batch].masked_fill(pad[batch], -100)).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()


def _build_into(target: Path) -> None:
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    logger.info("building the tiny captioner into %s", target)
    with staged_folder(target, "config.json") as staging:
        vocab_file = staging / "vocab.txt"
        vocab_file.write_text("\n".join(VOCABULARY) + "\n")
        tokenizer = BertTokenizer(str(vocab_file), do_lower_case=True, bos_token="[DEC]")
        vocab_file.unlink()
        image_processor = BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
        processor = BlipProcessor(image_processor, tokenizer)
        config = BlipConfig(vision_config=VISION_CONFIG, text_config=TEXT_CONFIG)
        torch.manual_seed(CAPTIONER_SEED)
        model = BlipForConditionalGeneration(config)
        with _single_thread():
            _fit(model, image_processor, CAPTIONER_SEED)
        model.save_pretrained(staging)
        processor.save_pretrained(staging)


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    """One intra-op thread during the fit, so the weights do not depend on the core count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
