"""An image-captioning model (BLIP and its kin) loaded once per worker, captioning batches.

The captioner is found by the same rules as a Stable Diffusion model
(:func:`labeler.models.backbone._resolve_source`, :func:`labeler.models.locate.locate_model`):
``tiny`` (the offline tiny captioner, :mod:`labeler.models.tiny.captioner`), a Hugging Face id
(``Salesforce/blip-image-captioning-base``, from the local cache or downloaded by the worker), a
local folder saved with ``save_pretrained`` (``config.json`` and the processor's files at its
root), or an fsspec URI of such a folder (copied once into the local cache).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor
from transformers.utils import logging as transformers_logging

from labeler.models.backbone import _check_local_weights, _resolve_source
from labeler.models.locate import ModelLoadError
from labeler.models.tiny.captioner import tiny_captioner_dir

logger = logging.getLogger(__name__)

#: The component name of a captioner in model resolution and its messages.
CAPTIONER = "captioner"
#: The most tokens a caption may take (greedy decoding; BLIP's captions take 8-15), fewer for a
#: decoder with fewer positions (:attr:`Captioner.max_new_tokens`).
MAX_CAPTION_TOKENS = 30


@dataclass
class Captioner:
    """A captioning model and its processor, frozen, in eval mode, on one device.

    Attributes:
        name: what the user asked for (``tiny``, a hub id, or a folder/URI).
        model: a transformers image-to-text model with ``generate`` (``BlipForConditionalGeneration``).
        processor: its processor (image preprocessing and tokenizer).
        device, dtype: where the model runs and its weight dtype.
    """

    name: str
    model: torch.nn.Module
    processor: object
    device: torch.device
    dtype: torch.dtype

    @property
    def max_new_tokens(self) -> int:
        """:data:`MAX_CAPTION_TOKENS`, or fewer when the text decoder has fewer positions after
        its start token (a small model that never says stop ends its caption there instead of
        indexing past its position table)."""
        text = getattr(self.model.config, "text_config", self.model.config)
        positions = getattr(text, "max_position_embeddings", None)
        return MAX_CAPTION_TOKENS if positions is None else min(MAX_CAPTION_TOKENS, positions - 1)

    @torch.no_grad()
    def caption(self, images: list[np.ndarray]) -> list[str]:
        """Captions of a batch of (H_i, W_i, 3) uint8 RGB images: one ``generate`` call, greedy
        (no sampling, one beam), so an image's caption does not depend on the seed."""
        inputs = self.processor(images=[Image.fromarray(image) for image in images], return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.device, self.dtype)
        tokens = self.model.generate(pixel_values=pixels, do_sample=False, num_beams=1,
                                     max_new_tokens=self.max_new_tokens)
        return [text.strip() for text in self.processor.batch_decode(tokens, skip_special_tokens=True)]


def load_captioner(name: str, device: torch.device, dtype: torch.dtype,
                   storage_options: dict | None = None) -> Captioner:
    """Load the captioner ``name`` once (see the module docstring for what ``name`` may be).

    Raises:
        ModelLoadError: the captioner is missing, unreachable or not an image-to-text model.
        MalformedSafetensors: a weight file's header is unsound (checked before loading).
    """
    source = _resolve_source(name, storage_options, component=CAPTIONER, builtin=tiny_captioner_dir)
    _check_local_weights(source)
    transformers_logging.disable_progress_bar()
    try:
        processor = AutoProcessor.from_pretrained(source)
        model = AutoModelForImageTextToText.from_pretrained(source, dtype=dtype)
    except (OSError, ValueError, KeyError) as error:
        raise ModelLoadError(
            f"could not load the captioner {name!r}: {error}. Pass `tiny`, a Hugging Face id of "
            "an image-captioning model reachable from this machine (or in its cache), or a folder "
            "saved with save_pretrained (local path or fsspec URI)."
        ) from error
    if not callable(getattr(model, "generate", None)):
        raise ModelLoadError(f"captioner {name!r} is not a model that generates text")
    model.requires_grad_(False)
    model.eval()
    model.to(device)
    logger.info("loaded captioner %s on %s (%s)", name, device, dtype)
    return Captioner(name=name, model=model, processor=processor, device=device, dtype=dtype)
