"""``labeler toy info [--names URI]``: the toy method's categories and names digest, as JSON."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from tests.toy_method.names import category_names


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``toy`` with its one sub-command, ``info``."""
    toy = subparsers.add_parser("toy", help="the toy method (tests): inspect its categories")
    commands = toy.add_subparsers(dest="toy_command", required=True)
    info = commands.add_parser("info", help="print the categories and the names file's digest")
    info.add_argument("--names", help="a names file, one category per line (default: dark, bright)")
    info.set_defaults(func=_info)
    return toy


def _info(args: argparse.Namespace) -> int:
    names = category_names(args.names)
    sys.stdout.write(json.dumps({"method": "toy", "categories": names.categories(),
                                 "names_digest": names.digest}, indent=1) + "\n")
    return 0
