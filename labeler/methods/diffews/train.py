"""Episodic DiffewS fine-tuning on the user's annotated images (the reference recipe).

One episode: a class c drawn uniformly, a query image containing it, k in {1..max_shots} support
images containing it (others than the query when there are any). With ``absent_share`` > 0 (an
option; the reference's queries always hold the class, and so does the default) that share of
episodes takes a query *without* c, whose target is the empty mask, to teach the model to answer
"not here" (docs/tiny-model.md has what it did on tiny). The support pass records the
banks (with gradients: the support branch learns through the query's loss), the query pass reads
them, and the loss is ``MSE(UNet(z_query, t=1), -z_mask)`` with z the VAE posterior *sample*
(the reference's training) of the query and of its class mask as a +-1 image. AdamW (lr 1e-5,
weight decay 1e-2), linear decay to 1e-7, gradient clipping 1.0, accumulation over episodes,
bf16/fp16 autocast on GPU with an fp32 master UNet. The whole UNet, both input convs included,
is trained; VAE and text encoder are frozen. ``conv_in_ref`` starts from the model's own when it
has one, else from the duplicate-and-halve init. A model that prescribes a start
(:func:`labeler.models.fine_tune.fine_tune_start`: the calibrated tiny model, a deviation for
offline tests and demos; docs/tiny-model.md) gets it applied, and its lr is the default.

Every episode's randomness comes from (seed, step, episode), so a resumed run draws exactly the
episodes of an uninterrupted one. ``OUTPUT/`` is a checkpoint folder from the first save on;
``OUTPUT/training/state.pt`` (UNet, optimiser, step; read with ``weights_only=True``) is what a
re-run continues from.
"""

from __future__ import annotations

import io
import json
import logging
import pickle
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from labeler.errors import UserError
from labeler.io.files import read_in, write_in
from labeler.io.folders import Folder
from labeler.io.uris import redact_uri
from labeler.methods.annotations import AnnotatedImage
from labeler.methods.diffews.algorithm import (
    DecisionRule,
    decode_soft_maps,
    foreground,
    mask_latent_from_output,
)
from labeler.methods.diffews.attention import install_kv_fusion
from labeler.methods.diffews.model import (
    NotADiffewsModel,
    duplicate_and_halve,
    install_dual_conv,
    model_unet_dir,
    read_support_conv,
    support_conv_from_tensors,
    write_checkpoint,
    write_unet,
)
from labeler.methods.diffews.support import TIMESTEP, empty_context, mask_images
from labeler.methods.preprocess import images_to_model_input
from labeler.models.backbone import load_backbone
from labeler.models.fine_tune import FineTuneStart, fine_tune_start

logger = logging.getLogger(__name__)

STATE = "training/state.pt"
#: The reference recipe's AdamW learning rate.
REFERENCE_LR = 1e-5
SETTINGS = "training/settings.json"


@dataclass(frozen=True)
class TrainSettings:
    """``labeler diffews train`` settings (reference values unless noted).

    Attributes:
        steps: optimiser steps (the reference script: 20000).
        lr: AdamW learning rate, decayed linearly to ``lr_end``; None = :data:`REFERENCE_LR`,
            or the lr of the start the model prescribes (the tiny model's).
        weight_decay, lr_end, grad_clip: AdamW weight decay, final lr, gradient-norm clip.
        accumulation: episodes per optimiser step (the script: 4).
        max_shots: shots per episode drawn from 1..max_shots (the script: 2).
        size: model input side; None = the model's.
        save_every: steps between checkpoints (and validation).
        seed: episode draws and VAE samples.
        context_tokens: empty-prompt length; 2, the inference default (the reference trains
            with 77 and infers with 2).
        absent_share: share of episodes whose query lacks the class (target: the empty mask);
            0 = the reference, whose queries always hold it.
    """

    steps: int = 20000
    lr: float | None = None
    weight_decay: float = 1e-2
    lr_end: float = 1e-7
    grad_clip: float = 1.0
    accumulation: int = 4
    max_shots: int = 2
    size: int | None = None
    save_every: int = 500
    seed: int = 0
    context_tokens: int = 2
    absent_share: float = 0.0

    def __post_init__(self) -> None:
        for name in ("steps", "accumulation", "max_shots", "save_every"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1")
        if not 0 <= self.absent_share < 1:
            raise UserError(f"absent_share must be in [0, 1) (got {self.absent_share})")
        if self.lr is not None and self.lr <= self.lr_end:
            raise UserError(f"lr must be > lr_end ({self.lr_end})")


@dataclass
class EncodedImage:
    """One training image, VAE-encoded once: posterior mean and std of the image and of each
    class mask (samples are drawn per episode as mean + std * noise).

    Attributes:
        image: (2, 4, h, w) posterior mean and std of the image.
        masks: class value -> (2, 4, h, w) of its +-1 mask image, for every class; the absent
            ones share one tensor, the empty mask's.
        classes: the non-background class values present.
    """

    image: Tensor
    masks: dict[int, Tensor]
    classes: list[int]


def _posterior(backbone, pixels: Tensor) -> Tensor:
    with torch.no_grad():
        dist = backbone.vae.encode(pixels.to(backbone.device, backbone.vae.dtype)).latent_dist
    scale = backbone.vae.config.scaling_factor
    return torch.stack([dist.mean * scale, dist.std * scale], dim=1).float()


def encode_dataset(backbone, samples: list[AnnotatedImage], num_classes: int, size: int) -> list[EncodedImage]:
    """Encode every image, every present class mask and the empty mask once."""
    encoded = []
    empty = _posterior(backbone, mask_images([np.zeros((size, size), bool)], size))[0]
    for sample in samples:
        image = _posterior(backbone, images_to_model_input([sample.image], size,
                                                            device=backbone.device))[0]
        present = [c for c in range(1, num_classes) if (sample.mask == c).any()]
        masks = {c: _posterior(backbone, mask_images([sample.mask == c], size))[0] if c in present else empty
                 for c in range(1, num_classes)}
        encoded.append(EncodedImage(image, masks, present))
    return encoded


def _sample(posterior: Tensor, generator: torch.Generator) -> Tensor:
    noise = torch.randn(posterior.shape[1:], generator=generator)
    return posterior[0] + posterior[1] * noise.to(posterior.device)


def draw_episode(data: list[EncodedImage], max_shots: int, generator: torch.Generator,
                 absent_share: float = 0.0) -> tuple[int, int, list[int]]:
    """(class, query index, support indices) of one episode; with probability ``absent_share``
    (when some image lacks the class) the query is an image without it."""
    classes = sorted({c for item in data for c in item.classes})
    cls = classes[int(torch.randint(len(classes), (), generator=generator))]
    holders = [i for i, item in enumerate(data) if cls in item.classes]
    lacking = [i for i, item in enumerate(data) if cls not in item.classes]
    absent = absent_share > 0 and lacking and float(torch.rand((), generator=generator)) < absent_share
    pool = lacking if absent else holders
    query = pool[int(torch.randint(len(pool), (), generator=generator))]
    others = [i for i in holders if i != query] or [query]
    shots = 1 + int(torch.randint(max_shots, (), generator=generator))
    order = torch.randperm(len(others), generator=generator).tolist()
    supports = [others[order[i % len(others)]] for i in range(shots)]
    return cls, query, supports


def episode_loss(unet, fusion, context: Tensor, data: list[EncodedImage], episode, generator) -> Tensor:
    """MSE between the query pass output and the negated query mask latent."""
    cls, query, supports = episode
    support_latents = torch.stack([
        torch.cat([_sample(data[i].image, generator), _sample(data[i].masks[cls], generator)])
        for i in supports
    ])
    query_latent = _sample(data[query].image, generator)[None]
    target = -_sample(data[query].masks[cls], generator)[None]
    device = context.device
    fusion.record(shots=len(supports))
    timesteps = torch.full((len(supports),), TIMESTEP, dtype=torch.long, device=device)
    unet(support_latents.to(device), timesteps, encoder_hidden_states=context.expand(len(supports), -1, -1))
    fusion.read(fusion.bank)
    output = unet(query_latent.to(device), timesteps[:1], encoder_hidden_states=context).sample
    fusion.off()
    return F.mse_loss(output.float(), target.to(device))


def validation_iou(backbone, fusion, context: Tensor, data: list[EncodedImage], samples: list[AnnotatedImage],
                   size: int, seed: int, episodes: int = 8) -> float:
    """Mean foreground IoU of 1-shot episodes (posterior means, the default decision rule)."""
    generator = torch.Generator().manual_seed(seed + 7919)
    rule = DecisionRule()
    ious = []
    unet = backbone.unet
    with torch.no_grad():
        for _ in range(episodes):
            cls, query, supports = draw_episode(data, 1, generator)
            support = torch.cat([data[supports[0]].image[0], data[supports[0]].masks[cls][0]])[None]
            fusion.record(shots=1)
            t = torch.full((1,), TIMESTEP, dtype=torch.long, device=context.device)
            unet(support.to(context.device, backbone.dtype), t, encoder_hidden_states=context)
            fusion.read(fusion.bank)
            output = unet(data[query].image[0][None].to(context.device, backbone.dtype), t,
                          encoder_hidden_states=context).sample
            fusion.off()
            soft = decode_soft_maps(backbone.vae, mask_latent_from_output(output))[0].cpu()
            truth = F.interpolate(torch.from_numpy(samples[query].mask == cls).float()[None, None],
                                  size=soft.shape, mode="nearest")[0, 0] > 0
            predicted = foreground(soft, rule)
            union = (predicted | truth).sum()
            ious.append(float((predicted & truth).sum() / union) if union else 1.0)
    return float(np.mean(ious))


def prepare_unet(model: str, unet) -> FineTuneStart | None:
    """Install the dual input conv: ``conv_in_ref`` from the model when it has one, else the
    duplicate-and-halve init, then the start the model prescribes, if any.

    Returns:
        the start applied (None: none).
    """
    unet_dir = model_unet_dir(model)
    try:
        weight, bias = read_support_conv(unet_dir)
        install_dual_conv(unet, support_conv_from_tensors(unet.conv_in, weight, bias))
    except NotADiffewsModel:
        logger.info("%s has no conv_in_ref: duplicate-and-halve initialisation", model)
        install_dual_conv(unet, duplicate_and_halve(unet.conv_in))
        start = fine_tune_start(unet_dir.parent)
        if start is not None:
            logger.info("%s", start.name)
            start.prepare(unet)
            return start
    return None


def _autocast(device: torch.device):
    if device.type != "cuda":
        return torch.autocast("cpu", enabled=False)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def train(samples: list[AnnotatedImage], classes: tuple[str, ...], output: str | Path, model: str,
          settings: TrainSettings, device: str | None = None,
          storage_options: dict | None = None) -> dict:
    """Fine-tune (or continue fine-tuning) a DiffewS checkpoint into ``output``.

    Args:
        output: the checkpoint folder, local or any fsspec URI: every file is written and read
            through :mod:`labeler.io` (atomic, retried), the state with ``weights_only=True``.
        storage_options: fsspec options for ``output`` and ``model``.

    Returns:
        a summary: steps done, last loss, validation IoU history.
    """
    uri, output = str(output), Folder(str(output), storage_options)
    record = {"model": model, "classes": list(classes), "settings": asdict(settings)}
    _check_resume(output, record)
    backbone = load_backbone(model, device=device, dtype=torch.float32,
                             storage_options=storage_options)
    unet = backbone.unet
    start = prepare_unet(model, unet)
    lr = settings.lr or (start.lr if start else REFERENCE_LR)
    fusion = install_kv_fusion(unet)
    size = settings.size or backbone.image_size
    context = empty_context(backbone, settings.context_tokens)
    data = encode_dataset(backbone, samples, len(classes), size)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - (1 - settings.lr_end / lr)
                                                 * min(step, settings.steps) / settings.steps)
    start, history = _restore(output, unet, optimizer, schedule)
    if start == 0:
        write_checkpoint(backbone, uri, storage_options)
        write_in(output, SETTINGS, json.dumps(record, indent=1, sort_keys=True).encode())
    scaler = torch.amp.GradScaler("cuda", enabled=backbone.device.type == "cuda"
                                  and not torch.cuda.is_bf16_supported())
    unet.train()
    unet.requires_grad_(True)
    loss_value = float("nan")
    for step in range(start, settings.steps):
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for micro in range(settings.accumulation):
            generator = torch.Generator().manual_seed(settings.seed * 1_000_003 + step * 97 + micro)
            episode = draw_episode(data, settings.max_shots, generator, settings.absent_share)
            with _autocast(backbone.device):
                loss = episode_loss(unet, fusion, context, data, episode, generator) / settings.accumulation
            scaler.scale(loss).backward()
            total += float(loss.detach())
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(unet.parameters(), settings.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        schedule.step()
        loss_value = total
        done = step + 1
        if done % settings.save_every == 0 or done == settings.steps:
            unet.eval()
            iou = validation_iou(backbone, fusion, context, data, samples, size, settings.seed)
            unet.train()
            history.append({"step": done, "loss": loss_value, "val_iou": iou})
            logger.info("step %d/%d: loss %.5f, validation IoU %.3f", done, settings.steps, loss_value, iou)
            _save(output, backbone, optimizer, schedule, done, history)
    unet.eval()
    return {"steps": settings.steps, "resumed_from": start, "lr": lr, "loss": loss_value, "history": history}


def _check_resume(folder: Folder, record: dict) -> None:
    data = read_in(folder, SETTINGS)
    if data is None:
        return
    path = redact_uri(folder.uri_of(SETTINGS))
    old = json.loads(data)
    keep = {k: v for k, v in record["settings"].items() if k != "steps"}
    old_keep = {k: v for k, v in old["settings"].items() if k != "steps"}
    if old["model"] != record["model"] or old["classes"] != record["classes"] or old_keep != keep:
        raise UserError(
            f"{redact_uri(folder.uri)} holds a training run with other settings ({path}); use a "
            "new --output or the same settings (only --steps may change)"
        )


def _restore(folder: Folder, unet, optimizer, schedule) -> tuple[int, list[dict]]:
    data = read_in(folder, STATE)
    if data is None:
        return 0, []
    path = redact_uri(folder.uri_of(STATE))
    try:  # weights_only: tensors and plain containers; a pickled callable is refused, never run
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        raise UserError(f"{path} is not a training state labeler wrote (remove it to start "
                        f"over): {str(error).splitlines()[0]}") from None
    unet.load_state_dict(state["unet"])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    logger.info("resuming from step %d (%s)", state["step"], path)
    return int(state["step"]), json.loads(state["history"])


def _save(output: Folder, backbone, optimizer, schedule, step: int, history: list[dict]) -> None:
    """The checkpoint folder's UNet, then the resumable state, each file written whole through
    :mod:`labeler.io` (:func:`~labeler.methods.diffews.model.write_unet`).

    A process killed between the two leaves the UNet of this save and the state of the last
    one: the re-run resumes from that state (which holds its own UNet weights) and saves again.
    """
    write_unet(backbone.unet, output)
    state = {"unet": backbone.unet.state_dict(), "optimizer": optimizer.state_dict(),
             "schedule": schedule.state_dict(), "step": step, "history": json.dumps(history)}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_in(output, STATE, buffer.getvalue())
