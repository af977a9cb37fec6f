"""``labeler slime``: fit, import and inspect SLiMe embedding sets.

Usage::

    labeler slime fit --images URI --masks URI --classes background,name1,... --output SET.safetensors
                      [--model NAME] [--seed N] [--epochs N] [--lr F] [--fit-size N] ...
    labeler slime import --folder DIR --classes background,name1,... --output SET.safetensors
                         [--model NAME] [--channel-order bgr|rgb]
    labeler slime info SET.safetensors

Flags that are not given stay ``None`` and never override the library defaults
(:class:`labeler.methods.slime.fit.FitSettings`), so the defaults live in one place.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from typing import Any

from labeler.errors import UserError
from labeler.io.listing import path_kind
from labeler.models.locate import SD21_BASE

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_BAD_INPUT = 2


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``slime`` (with ``fit``, ``import``, ``info``); each ``func`` returns an exit code."""
    slime = subparsers.add_parser(
        "slime", help="SLiMe: fit embedding sets from 1-10 annotated images, import, inspect",
        description="Learn SLiMe embedding sets from a few annotated images; apply them with "
                    "`labeler run --method slime --embeddings SET`.",
    )
    commands = slime.add_subparsers(dest="slime_command", required=True)
    _add_fit(commands)
    _add_import(commands)
    _add_info(commands)
    return slime


def _add_fit(commands) -> None:
    fit = commands.add_parser(
        "fit", help="learn an embedding set from annotated images",
        description="Fit one embedding per non-background class on 1 or more images with label-map "
                    "masks (PNG or .npy, values 0..K-1, paired with images by file stem).",
    )
    fit.add_argument("--images", required=True, help="folder or file of images (any fsspec URI)")
    fit.add_argument("--masks", required=True, help="folder or file of label maps (.png/.npy)")
    fit.add_argument("--classes", required=True,
                     help="comma-separated class names, background first (K names for values 0..K-1)")
    fit.add_argument("--output", required=True, help="the embedding set to write (.safetensors)")
    fit.add_argument("--model", help="tiny, a Hugging Face id or a diffusers directory "
                                     f"(default: {SD21_BASE})")
    fit.add_argument("--seed", type=int, help="seed for augmentation, noise and timesteps (default 0)")
    group = fit.add_argument_group("optimisation (reference defaults)")
    group.add_argument("--epochs", type=int, help="passes over the images, one step per image (200)")
    group.add_argument("--lr", type=float, help="Adam learning rate (0.1)")
    group.add_argument("--train-t", type=int, nargs=2, dest="train_t", metavar=("LOW", "HIGH"),
                       help="inclusive timestep range (5 100)")
    group.add_argument("--mse-weight", type=float, dest="mse_weight", help="WAS MSE weight alpha (1.0)")
    group.add_argument("--sd-weight", type=float, dest="sd_weight", help="SD loss weight beta (0.005)")
    group.add_argument("--guidance", type=float, help="guidance scale inside the SD loss (100)")
    group.add_argument("--mask-size", type=int, dest="mask_size", help="loss resolution (64)")
    group.add_argument("--fit-size", type=int, dest="fit_size",
                       help="model input side during the fit (default: the model's, 512 for SD)")
    group.add_argument("--min-crop-ratio", type=float, dest="min_crop_ratio",
                       help="smallest random crop side fraction (0.8; the paper's car/face runs: 0.6)")
    group.add_argument("--rotation", type=float, help="max rotation in degrees (30; faces: 10)")
    group.add_argument("--no-augment", action="store_false", dest="augment", default=None,
                       help="no flip/blur/crop/rotation")
    group.add_argument("--resize", choices=["float", "reference"],
                       help="resize to the fit size: float bilinear (default) or reference "
                            "(OpenCV uint8 INTER_LINEAR, as the official code); recorded for labeler run")
    group.add_argument("--no-antialias", action="store_false", dest="antialias", default=None,
                       help="float resize without antialiasing (the official code never "
                            "antialiases); recorded for labeler run")
    group.add_argument("--bgr", action="store_const", const="bgr", dest="channel_order",
                       help="feed the VAE BGR like the reference code (default RGB)")
    group.add_argument("--prompt", help="prompt whose positions 1..K-1 are learned (default: 'part' x K)")
    group.add_argument("--select-best", action="store_true", dest="select_best", default=None,
                       help="validate after every epoch and keep the best embeddings (reference)")
    group.add_argument("--val-images", dest="val_images", help="validation images for --select-best "
                                                                "(default: the training images)")
    group.add_argument("--val-masks", dest="val_masks", help="validation masks for --select-best")
    infer = fit.add_argument_group("inference settings recorded in the set")
    infer.add_argument("--patches-per-side", type=int, dest="patches_per_side",
                       help="n of the n x n patch grid (2; the paper's PASCAL runs: 1)")
    infer.add_argument("--patch-size", type=int, dest="patch_size",
                       help="patch side on the 512 canvas (400; with 1 patch per side: 512)")
    run = fit.add_argument_group("execution")
    run.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda when available)")
    run.add_argument("--dtype", help="auto, float32, float16, bfloat16")
    run.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    fit.set_defaults(func=_fit)


def _add_import(commands) -> None:
    imp = commands.add_parser(
        "import", help="convert an official SLiMe checkpoint folder (embedding_i.pth)",
        description="Read a folder of official SLiMe embedding_i.pth tensors (weights_only, shapes "
                    "checked) and write a labeler embedding set.",
    )
    imp.add_argument("--folder", required=True, help="the folder holding embedding_0.pth ...")
    imp.add_argument("--classes", required=True,
                     help="comma-separated class names, background first (the reference's --part_names)")
    imp.add_argument("--output", required=True, help="the embedding set to write (.safetensors)")
    imp.add_argument("--model", help=f"the model they were fit on (default: {SD21_BASE})")
    imp.add_argument("--channel-order", choices=["bgr", "rgb"], default="bgr", dest="channel_order",
                     help="colour order the embeddings were fit with (reference code: bgr)")
    imp.add_argument("--no-fingerprint", action="store_true", dest="no_fingerprint",
                     help="do not read the model's configs; only the embedding width is checked later")
    imp.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    imp.set_defaults(func=_import)


def _add_info(commands) -> None:
    info = commands.add_parser("info", help="print an embedding set's classes, model and settings")
    info.add_argument("set", help="the embedding set (.safetensors, any fsspec URI)")
    info.set_defaults(func=_info)


def parse_classes(text: str) -> tuple[str, ...]:
    """``background,wheel,window`` -> the K names (whitespace trimmed)."""
    return tuple(name.strip() for name in text.split(","))


def _refuse_existing(uri: str, overwrite: bool) -> None:
    if not overwrite and path_kind(uri) is not None:
        raise UserError(f"{uri} exists; pass --overwrite to replace it")


def _fit(args: argparse.Namespace) -> int:
    # the annotations are read and checked first: a bad mask is refused before torch is imported
    from labeler.methods.annotations import load_annotated
    from labeler.methods.slime.settings import validate_classes

    classes = parse_classes(args.classes)
    validate_classes(classes)
    _refuse_existing(args.output, args.overwrite)
    if bool(args.val_images) != bool(args.val_masks):
        raise UserError("--val-images and --val-masks go together")
    samples = load_annotated(args.images, args.masks, len(classes))
    validation = None
    if args.val_images:
        validation = load_annotated(args.val_images, args.val_masks, len(classes))

    from labeler.methods.slime.embedding_set import DEFAULT_MODEL
    from labeler.methods.slime.fit import FitSettings, default_inference, fit_embedding_set
    from labeler.models.backbone import load_backbone

    keys = ("epochs", "lr", "train_t", "mse_weight", "sd_weight", "guidance", "mask_size", "fit_size",
            "min_crop_ratio", "rotation", "augment", "antialias", "resize", "channel_order", "seed",
            "prompt", "select_best")
    given = {key: getattr(args, key) for key in keys if getattr(args, key) is not None}
    if "train_t" in given:
        given["train_t"] = tuple(given["train_t"])
    settings = FitSettings(**given)
    if validation is not None:
        settings = dataclasses.replace(settings, select_best=True)  # validation images imply it
    inference = default_inference()
    for key in ("patches_per_side", "patch_size"):
        if getattr(args, key) is not None:
            inference[key] = getattr(args, key)
    model = args.model or DEFAULT_MODEL
    backbone = load_backbone(model, device=args.device, dtype=args.dtype)
    embedding_set = fit_embedding_set(
        backbone, samples, classes, settings, inference=inference, validation=validation,
        progress=not args.no_progress, model_name=model,
    )
    digest = embedding_set.save(args.output)
    losses = embedding_set.fit["final_losses"]
    sys.stdout.write(
        f"wrote {args.output} ({len(classes) - 1} embeddings for {', '.join(classes[1:])}; "
        f"sha256 {digest}); last-epoch loss {losses['total']:.4f} "
        f"(ce {losses['ce']:.4f}, mse {losses['mse']:.4f}, sd {losses['sd']:.4f}) "
        f"in {embedding_set.fit['seconds']:.0f} s\n"
        f"Apply it: labeler run --method slime --embeddings {args.output} --input IMAGES --output OUT\n"
    )
    return EXIT_OK


def _import(args: argparse.Namespace) -> int:
    from labeler.methods.slime.embedding_set import (
        DEFAULT_MODEL,
        config_fingerprint,
        import_official,
    )

    classes = parse_classes(args.classes)
    _refuse_existing(args.output, args.overwrite)
    model = args.model or DEFAULT_MODEL
    fingerprint = None if args.no_fingerprint else config_fingerprint(model)
    embedding_set = import_official(args.folder, classes, model, fingerprint, args.channel_order)
    digest = embedding_set.save(args.output)
    sys.stdout.write(
        f"wrote {args.output}: {embedding_set.num_classes - 1} embeddings of width "
        f"{embedding_set.dim} for {', '.join(classes[1:])} (model {model}, "
        f"{args.channel_order.upper()} input; sha256 {digest})\n"
    )
    return EXIT_OK


def _info(args: argparse.Namespace) -> int:
    from labeler.methods.slime.embedding_set import EmbeddingSet

    embedding_set = EmbeddingSet.load(args.set)
    summary = {
        "sha256": embedding_set.sha256,
        "classes": list(embedding_set.classes),
        "embeddings": list(embedding_set.embeddings.shape),
        **{key: value for key, value in embedding_set.metadata().items() if key != "classes"},
    }
    sys.stdout.write(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
    return EXIT_OK
