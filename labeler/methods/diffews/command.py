"""``labeler diffews``: train a DiffewS checkpoint, import an official release.

Usage::

    labeler diffews train --images URI --masks URI --classes background,a,b --output DIR
                          [--model BASE] [--steps N] [--seed N] [--lr F] [--accumulation N]
                          [--max-shots N] [--size N] [--save-every N] [--absent-share F]
                          [--device DEV]
    labeler diffews import --base BASE --unet UNET_DIR --output DIR

Flags that are not given stay ``None`` and never override the defaults of
:class:`labeler.methods.diffews.train.TrainSettings`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from labeler.errors import UserError
from labeler.io.listing import path_kind
from labeler.io.uris import redact_uri
from labeler.models.locate import SD21_BASE

#: The base the reference fine-tunes.
DEFAULT_BASE = SD21_BASE
TRAIN_KEYS = ("steps", "seed", "lr", "accumulation", "max_shots", "size", "save_every", "absent_share")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``diffews`` (with ``train`` and ``import``); each ``func`` returns an exit code."""
    diffews = subparsers.add_parser(
        "diffews", help="DiffewS: fine-tune a few-shot checkpoint on annotated images, import one",
        description="Train DiffewS checkpoints; apply them with `labeler run --method diffews`.",
    )
    commands = diffews.add_subparsers(dest="diffews_command", required=True)
    fit = commands.add_parser("train", help="episodic fine-tuning on annotated images")
    fit.add_argument("--images", required=True, help="folder or file of images (any fsspec URI)")
    fit.add_argument("--masks", required=True, help="folder or file of label maps (.png/.npy)")
    fit.add_argument("--classes", required=True, help="class names, background first: background,a,b")
    fit.add_argument("--output", required=True, help="checkpoint folder (re-running continues it)")
    fit.add_argument("--model", help=f"base model or DiffewS checkpoint (default {DEFAULT_BASE})")
    fit.add_argument("--steps", type=int, help="optimiser steps (20000)")
    fit.add_argument("--seed", type=int, help="episodes and VAE samples (0)")
    fit.add_argument("--lr", type=float, help="AdamW learning rate (1e-5; 1e-3 from the tiny model)")
    fit.add_argument("--accumulation", type=int, help="episodes per step (4)")
    fit.add_argument("--max-shots", type=int, dest="max_shots", help="shots per episode, 1..N (2)")
    fit.add_argument("--size", type=int, help="model input side (the model's, 512 for SD)")
    fit.add_argument("--save-every", type=int, dest="save_every", help="steps between checkpoints (500)")
    fit.add_argument("--absent-share", type=float, dest="absent_share",
                     help="share of episodes whose query lacks the class, target empty (0, the official)")
    fit.add_argument("--device", help="cuda, cpu (default: cuda when available)")
    fit.set_defaults(func=_train)
    imp = commands.add_parser("import", help="assemble an official release into one checkpoint folder")
    imp.add_argument("--base", required=True, help="the base model folder (VAE, text encoder, ...)")
    imp.add_argument("--unet", required=True, help="the fine-tuned unet folder (with conv_in_ref)")
    imp.add_argument("--output", required=True, help="the checkpoint folder to write")
    imp.set_defaults(func=_import)
    return diffews


def _classes(text: str) -> tuple[str, ...]:
    classes = tuple(name.strip() for name in text.split(","))
    if len(classes) < 2 or len(set(classes)) != len(classes) or not all(classes):
        raise UserError(f"--classes must be at least two unique names, background first; got {text!r}")
    return classes


def _train(args: argparse.Namespace) -> int:
    # torch and diffusers are imported when the command runs, so every other command starts
    # fast, and after the annotations are read and checked: a bad mask is refused in seconds
    from labeler.methods.annotations import load_annotated

    classes = _classes(args.classes)
    samples = load_annotated(args.images, args.masks, len(classes))

    from labeler.methods.diffews.train import TrainSettings, train

    values = {key: getattr(args, key) for key in TRAIN_KEYS if getattr(args, key) is not None}
    settings = TrainSettings(**values)
    summary = train(samples, classes, args.output, args.model or DEFAULT_BASE, settings, args.device)
    sys.stdout.write(json.dumps({**summary, "settings": dataclasses.asdict(settings)}, indent=1) + "\n")
    sys.stdout.write(f"checkpoint: {args.output} (labeler run --method diffews --model {args.output} ...)\n")
    return 0


def _import(args: argparse.Namespace) -> int:
    from labeler.methods.diffews.model import import_checkpoint  # torch: only when run

    if path_kind(args.output) is not None:
        raise UserError(f"{redact_uri(args.output)} exists; choose a new folder")
    output = import_checkpoint(args.base, args.unet, args.output)
    sys.stdout.write(f"checkpoint: {output}\n")
    return 0
