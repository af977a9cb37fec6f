"""``labeler export``: write a finished output in another format, streaming from its parts.

Usage::

    labeler export OUTPUT --format coco-rle --out DIR

Reads ``images.parquet`` and ``annotations/`` of OUTPUT shard by shard (memory flat in the
collection size) and writes the format's files under DIR (any fsspec URI). The formats are the
entries of :mod:`labeler.output.exporters.registry`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from labeler.io.storage import Folder
from labeler.output.exporters.base import ExportOptionError
from labeler.output.exporters.registry import DEFAULT_FORMATS, EXPORTERS, get_exporter
from labeler.output.reader import OutputReader, OutputReadError

EXIT_OK = 0
EXIT_BAD_INPUT = 2


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``export`` on an argparse subparsers object; ``func`` returns an exit code."""
    formats = "; ".join(f"{name}: {EXPORTERS[name].description}" for name in sorted(EXPORTERS))
    p = subparsers.add_parser(
        "export",
        help="write a finished output in another format",
        description=f"Write a finished output in another format, streaming. Formats: {formats}.",
    )
    p.add_argument("output", metavar="OUTPUT", help="output folder of a finished run (any fsspec URI)")
    p.add_argument("--format", choices=sorted(EXPORTERS), default=DEFAULT_FORMATS[0],
                   help=f"export format (default {DEFAULT_FORMATS[0]})")
    p.add_argument("--out", metavar="DIR", required=True, help="destination folder (any fsspec URI)")
    p.set_defaults(func=run_export)
    return p


def run_export(args: argparse.Namespace) -> int:
    """Run ``labeler export`` from parsed arguments; returns the exit code."""
    try:
        reader = OutputReader.open(Folder(args.output))
        out = Folder(args.out)
        if out.fs.isfile(out.root):
            raise OutputReadError(f"--out {args.out} is a file, not a folder")
        written = get_exporter(args.format).write(reader, out, {})
    except (OutputReadError, ExportOptionError) as error:
        sys.stderr.write(f"labeler export: error: {error}\n")
        return EXIT_BAD_INPUT
    sys.stdout.write(f"{args.format}: wrote {', '.join(written)} in {args.out}\n")
    return EXIT_OK
