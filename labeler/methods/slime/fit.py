"""Fitting a SLiMe embedding set: the optimisation loop of the reference, seeded.

Per step (docs/slime.md, table "What runs"): one augmented annotated image, VAE posterior
sample, t ~ U{5..100}, x_t = add_noise(z0, eps, t); the UNet runs once with the learned
conditioning (with grad, SLiMe processors installed) and once with the empty prompt (without
grad: it only feeds the SD loss). Loss = weighted CE on the layer-averaged cross-attention logits
+ alpha * K * MSE(WAS, one-hot mask) + beta * MSE(eps_u + g (eps_c - eps_u), eps) with
alpha = 1, beta = 0.005, g = 100. Adam, lr 0.1, on token positions 1..K-1 only (initialised from
the text encoder's output for the prompt ``part`` x K); 200 epochs of one step per image.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from labeler.attention.hooks import AttentionHooks
from labeler.attention.layers import resolve_layers
from labeler.errors import UserError
from labeler.methods.annotations import AnnotatedImage
from labeler.methods.preprocess import RESIZE_MODES
from labeler.methods.slime.algorithm import DEFAULT_LAYERS, class_probabilities, mean_iou_present
from labeler.methods.slime.capture import SlimeAttentionStore, slime_processors
from labeler.methods.slime.data import AugmentSettings, augment, prepare
from labeler.methods.slime.embedding_set import (
    EmbeddingSet,
    assemble_context,
    default_prompt,
    prompt_embeddings,
)
from labeler.methods.slime.segmenter import Slime
from labeler.methods.slime.settings import recorded_inference_defaults, validate_classes

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitSettings:
    """Fit hyper-parameters (reference defaults).

    Attributes:
        epochs: passes over the annotated images, one step per image (reference 200).
        lr: Adam learning rate (reference 0.1).
        train_t: inclusive timestep range (reference [5, 100]).
        mse_weight: alpha, the WAS MSE weight (reference 1.0).
        sd_weight: beta, the SD noise-loss weight (reference 0.005).
        guidance: the CFG scale inside the SD loss (reference 100).
        mask_size: the loss resolution (reference 64).
        fit_size: the model input side during the fit; None = the model's native size (512 for
            SD). Smaller sizes are much cheaper and meant for CPU tests and quick trials.
        min_crop_ratio, rotation, augment: see :class:`labeler.methods.slime.data.AugmentSettings`.
        antialias: antialias the resize to the fit size (float resize only; the reference does
            not antialias).
        resize: ``float`` (bilinear in float32) or ``reference`` (OpenCV uint8 ``INTER_LINEAR``,
            as the reference), for the resize to the fit size and the crop resized back.
            Both are recorded in the set's inference settings, so ``labeler run`` resizes as
            the fit did unless the job says otherwise.
        channel_order: ``rgb`` (default) or ``bgr`` (the reference's cv2 reading; its released
            embeddings expect it).
        seed: seeds augmentations, timesteps, noise, VAE samples and the image order.
        prompt: the prompt whose positions 1..K-1 are optimised; None = ``part`` x K.
        was_impl: ``fused`` or ``explicit`` WAS-attention.
        select_best: validate after each epoch and keep the embeddings with the best per-image
            mIoU (``>=``, as the reference; its 1-shot validation image is the training image).
    """

    epochs: int = 200
    lr: float = 0.1
    train_t: tuple[int, int] = (5, 100)
    mse_weight: float = 1.0
    sd_weight: float = 0.005
    guidance: float = 100.0
    mask_size: int = 64
    fit_size: int | None = None
    min_crop_ratio: float = 0.8
    rotation: float = 30.0
    augment: bool = True
    antialias: bool = True
    resize: str = "float"
    channel_order: str = "rgb"
    seed: int = 0
    prompt: str | None = None
    was_impl: str = "fused"
    select_best: bool = False

    def __post_init__(self) -> None:
        low, high = self.train_t
        if not 0 <= low <= high < 1000:
            raise UserError(f"train_t must be an inclusive range within [0, 999], got {self.train_t}")
        if self.epochs < 1 or self.lr <= 0:
            raise UserError("epochs must be >= 1 and lr > 0")
        if self.resize not in RESIZE_MODES:
            raise UserError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {self.resize!r}")
        if self.channel_order not in ("rgb", "bgr"):
            raise UserError("channel_order must be rgb or bgr")
        if self.fit_size is not None and (self.fit_size < 64 or self.fit_size % 64):
            raise UserError(f"fit_size must be a multiple of 64 (the UNet halves the latent 3 times), got {self.fit_size}")
        if self.mask_size < 1:
            raise UserError("mask_size must be >= 1")


# --------------------------------------------------------------------------------------------
# Losses (pure).
# --------------------------------------------------------------------------------------------


def class_weights(mask: Tensor, num_classes: int) -> Tensor:
    """The reference CE weights: background 1, present part c N_fg / N_c, absent parts 0.

    Args:
        mask: (..., h, w) int64 labels.

    Returns:
        (K,) float32.
    """
    counts = torch.bincount(mask.flatten(), minlength=num_classes).float()
    foreground = counts[1:].sum()
    weights = torch.where(counts > 0, foreground / counts.clamp_min(1), torch.zeros_like(counts))
    weights[0] = 1.0
    return weights


def ce_loss(logits: Tensor, mask: Tensor) -> Tensor:
    """Weighted cross-entropy of the layer-averaged logits (weighted mean, reference weights).

    Args:
        logits: (B, K, h, w); mask: (B, h, w).
    """
    return F.cross_entropy(logits.float(), mask, weight=class_weights(mask, logits.shape[1]).to(logits.device))


def was_mse_loss(was: Tensor, mask: Tensor) -> Tensor:
    """K x mean squared error between WAS and the one-hot mask, in [0, 2].

    Args:
        was: (B, K, h, w); mask: (B, h, w).
    """
    classes = was.shape[1]
    one_hot = F.one_hot(mask, classes).permute(0, 3, 1, 2).float()
    return classes * F.mse_loss(was.float(), one_hot)


def sd_loss(noise_uncond: Tensor, noise_cond: Tensor, noise: Tensor, guidance: float) -> Tensor:
    """MSE of the guidance-combined prediction ``u + g (c - u)`` against the added noise."""
    prediction = noise_uncond.float() + guidance * (noise_cond.float() - noise_uncond.float())
    return F.mse_loss(prediction, noise.float())


# --------------------------------------------------------------------------------------------
# The fit.
# --------------------------------------------------------------------------------------------


class SlimeFitter:
    """Holds the optimised embeddings and runs training steps on one backbone.

    Args:
        backbone: the loaded SD components (frozen).
        classes: K names, background first.
        settings: the hyper-parameters.
        layers: ``{"cross": selectors, "self": selectors}``; None = the reference layers.
    """

    def __init__(self, backbone, classes: Sequence[str], settings: FitSettings,
                 layers: dict[str, Sequence[str]] | None = None) -> None:
        validate_classes(tuple(classes))
        self.backbone = backbone
        self.classes = tuple(classes)
        self.settings = settings
        self.num_classes = len(classes)
        self.layers = {kind: list(s) for kind, s in (layers or DEFAULT_LAYERS).items()}
        self.cross_keys = resolve_layers(backbone.unet, self.layers["cross"])
        self.self_keys = resolve_layers(backbone.unet, self.layers["self"])
        self.store = SlimeAttentionStore(self.cross_keys, self.self_keys, self.num_classes,
                                         lambda logits, _: class_probabilities(logits), settings.was_impl)
        self.hooks = AttentionHooks(backbone.unet, slime_processors(self.store))
        self.prompt = settings.prompt or default_prompt(self.num_classes)
        self.base = prompt_embeddings(backbone, self.prompt).to(backbone.device)  # (77, D) fp32
        self.uncond = prompt_embeddings(backbone, "").to(backbone.device, backbone.dtype)[None]
        self.embeddings = torch.nn.Parameter(self.base[1 : self.num_classes].clone())
        self.optimizer = torch.optim.Adam([self.embeddings], lr=settings.lr)
        self.size = settings.fit_size or backbone.image_size
        self.augment_settings = AugmentSettings(
            size=self.size, mask_size=settings.mask_size, min_crop_ratio=settings.min_crop_ratio,
            rotation=settings.rotation, enabled=settings.augment, resize=settings.resize,
        )
        self.generator = torch.Generator().manual_seed(settings.seed)

    def close(self) -> None:
        """Give the UNet its original attention processors back."""
        self.hooks.restore()

    def context(self) -> Tensor:
        """(1, 77, D) conditioning in the model dtype, differentiable w.r.t. the embeddings."""
        return assemble_context(self.base, self.embeddings)[None].to(self.backbone.dtype)

    def losses(self, pixels: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """Forward one sample and return the loss terms (``total`` keeps the graph).

        Args:
            pixels: (1, 3, S, S) in [-1, 1], channel order applied; mask: (1, m, m) int64.
        """
        backbone, settings = self.backbone, self.settings
        latents = backbone.encode_images(pixels, self.generator, sample=True).float()
        low, high = settings.train_t
        timestep = int(torch.randint(low, high + 1, (), generator=self.generator))
        noise = torch.randn(latents.shape, generator=self.generator).to(latents.device)
        timesteps = torch.full((latents.shape[0],), timestep, dtype=torch.long, device=latents.device)
        noisy = backbone.scheduler.add_noise(latents, noise, timesteps).to(backbone.dtype)

        store = self.store
        store.reset()
        self.hooks.ensure()
        noise_cond = backbone.unet(noisy, timesteps, encoder_hidden_states=self.context()).sample
        logits = store.cross_logits(settings.mask_size)
        was = store.was(settings.mask_size)
        terms = {"ce": ce_loss(logits, mask), "mse": was_mse_loss(was, mask)}
        if settings.sd_weight:
            with torch.no_grad(), store.paused():
                noise_uncond = backbone.unet(noisy, timesteps, encoder_hidden_states=self.uncond).sample
            terms["sd"] = sd_loss(noise_uncond, noise_cond, noise, settings.guidance)
        else:
            terms["sd"] = torch.zeros((), device=logits.device)
        terms["total"] = terms["ce"] + settings.mse_weight * terms["mse"] + settings.sd_weight * terms["sd"]
        terms["t"] = torch.tensor(float(timestep))
        return terms

    def step(self, pixels: Tensor, mask: Tensor) -> dict[str, float]:
        """One optimiser step; returns the loss terms as floats."""
        self.optimizer.zero_grad(set_to_none=True)
        terms = self.losses(pixels, mask)
        terms["total"].backward()
        self.optimizer.step()
        return {name: float(value.detach()) for name, value in terms.items()}

    def sample(self, image: Tensor, mask: Tensor, target: int) -> tuple[Tensor, Tensor]:
        """Augmented model input (1, 3, S, S) on the device and loss mask (1, m, m)."""
        pixels, loss_mask = augment(image, mask, self.augment_settings, self.generator, target)
        if self.settings.channel_order == "bgr":
            pixels = pixels.flip(0)
        device = self.backbone.device
        return pixels[None].to(device), loss_mask[None].to(device)

    def embedding_set(self, model: str, inference: dict, provenance: dict) -> EmbeddingSet:
        """The current embeddings as an :class:`EmbeddingSet`."""
        return EmbeddingSet(
            embeddings=self.embeddings.detach().cpu().clone(),
            classes=self.classes,
            model=model,
            model_fingerprint=self.backbone.fingerprint,
            prompt=self.prompt,
            layers=self.layers,
            channel_order=self.settings.channel_order,
            inference=inference,
            fit=provenance,
        )


def fit_embedding_set(
    backbone,
    samples: list[AnnotatedImage],
    classes: Sequence[str],
    settings: FitSettings | None = None,
    inference: dict | None = None,
    validation: list[AnnotatedImage] | None = None,
    progress: bool = True,
    model_name: str | None = None,
) -> EmbeddingSet:
    """Fit K-1 embeddings on annotated images (one-shot or few-shot).

    Args:
        backbone: the loaded model.
        samples: the annotated images (masks with values 0..K-1).
        classes: K names, background first.
        settings: hyper-parameters (reference defaults).
        inference: inference settings to record in the set (reference defaults when None).
        validation: images for ``settings.select_best`` (default: the training images).
        progress: show a progress bar (step, loss terms, time left).
        model_name: the model id to record (default: ``backbone.name``).

    Returns:
        the fitted set (not yet saved).
    """
    from tqdm.auto import tqdm

    settings = settings or FitSettings()
    if not samples:
        raise UserError("no annotated images to fit on")
    fitter = SlimeFitter(backbone, classes, settings)
    prepared = [prepare(sample, fitter.size, settings.antialias, settings.resize) for sample in samples]
    inference = recorded_inference(settings, inference)
    order_generator = np.random.default_rng(settings.seed)
    total_steps = settings.epochs * len(samples)
    started = time.perf_counter()
    best = _BestTracker(settings.select_best, validation or samples, fitter, inference)
    history: list[dict[str, float]] = []
    step = 0
    try:
        with tqdm(total=total_steps, desc="slime fit", unit="step", disable=not progress, dynamic_ncols=True) as bar:
            for epoch in range(settings.epochs):
                for index in order_generator.permutation(len(samples)):
                    image, mask = prepared[index]
                    pixels, loss_mask = fitter.sample(image, mask, target=step % fitter.num_classes)
                    terms = fitter.step(pixels, loss_mask)
                    history.append(terms)
                    step += 1
                    bar.update(1)
                    bar.set_postfix(epoch=epoch + 1, loss=f"{terms['total']:.3f}", ce=f"{terms['ce']:.3f}",
                                    mse=f"{terms['mse']:.3f}", sd=f"{terms['sd']:.3f}", t=int(terms["t"]))
                best.after_epoch(epoch)
    finally:
        fitter.close()
    seconds = time.perf_counter() - started
    embeddings = best.embeddings if best.embeddings is not None else fitter.embeddings.detach().cpu().clone()
    provenance = _provenance(backbone, samples, settings, history, seconds, best)
    result = fitter.embedding_set(model_name or backbone.name, inference, provenance)
    result.embeddings = embeddings
    logger.info("fit %d steps in %.1f s; final loss %.4f", total_steps, seconds, history[-1]["total"])
    return result


def default_inference() -> dict:
    """The inference settings a new set records (the reference's)."""
    return recorded_inference_defaults()


def recorded_inference(settings: FitSettings, inference: dict | None = None) -> dict:
    """The inference settings a fitted set records: ``inference`` (default: the reference's)
    with the fit's resize (``resize``, ``antialias``), so ``labeler run`` resizes as the fit."""
    return {**(inference or default_inference()), "resize": settings.resize,
            "antialias": settings.antialias}


class _BestTracker:
    """Per-epoch validation and the best embeddings so far (only with ``select_best``)."""

    def __init__(self, enabled: bool, images: list[AnnotatedImage], fitter: SlimeFitter,
                 inference: dict | None) -> None:
        self.enabled = enabled
        self.images = images
        self.fitter = fitter
        self.inference = inference or default_inference()
        self.embeddings: Tensor | None = None
        self.score = -1.0
        self.epoch: int | None = None

    def after_epoch(self, epoch: int) -> None:
        if not self.enabled:
            return
        candidate = self.fitter.embedding_set(self.fitter.backbone.name, self.inference, {})
        segmenter = Slime(self.fitter.backbone, candidate, seed=self.fitter.settings.seed)
        try:
            predictions = segmenter.predict([sample.image for sample in self.images])
        finally:
            segmenter.close()
        score = float(np.mean([
            mean_iou_present(labels, sample.mask, self.fitter.num_classes)
            for (labels, _), sample in zip(predictions, self.images)
        ]))
        logger.info("epoch %d: validation mIoU %.4f", epoch + 1, score)
        if score >= self.score:
            self.score, self.epoch = score, epoch + 1
            self.embeddings = candidate.embeddings.clone()


def _provenance(backbone, samples, settings, history, seconds, best: _BestTracker) -> dict:
    import diffusers

    import labeler

    last_epoch = history[-len(samples):]
    record = {
        "settings": dataclasses.asdict(settings),
        "images": [{"name": s.name, "sha256": s.sha256, "height": int(s.image.shape[0]),
                    "width": int(s.image.shape[1])} for s in samples],
        "steps": len(history),
        "seconds": round(seconds, 2),
        "final_losses": {key: round(float(np.mean([h[key] for h in last_epoch])), 6)
                         for key in ("total", "ce", "mse", "sd")},
        "device": str(backbone.device),
        "dtype": str(backbone.dtype).removeprefix("torch."),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"labeler": labeler.__version__, "torch": torch.__version__,
                     "diffusers": diffusers.__version__},
    }
    if best.enabled:
        record["best_epoch"] = best.epoch
        record["validation_miou"] = round(best.score, 6)
    return record
