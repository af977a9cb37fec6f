"""``labeler report OUTPUT [--out DIR]``: ``OUTPUT/report/index.html`` and ``report.json``.

One streaming pass over the output (:mod:`.stats`), then one page of inline SVG plots
(:mod:`.page`): annotations per image, score and area distributions, per-class counts, failures
by reason. Any fsspec URI works for both folders.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from labeler.errors import UserError
from labeler.io.folders import Folder
from labeler.io.uris import join_uri
from labeler.output.reader import OutputReader, OutputReadError
from labeler.report.page import render_report
from labeler.report.stats import RunStats, gather


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "report", help="write an HTML page of plots summing up a run",
        description="Plot a finished output: annotations per image, score and area "
                    "distributions, per-class counts and failures by reason, in "
                    "OUTPUT/report/index.html (inline SVG; report.json holds the numbers).")
    parser.add_argument("output", help="the run's output folder URI")
    parser.add_argument("--out", metavar="DIR", help="destination folder (default OUTPUT/report)")
    parser.set_defaults(func=_report)


@dataclass(frozen=True)
class Report:
    """What :func:`write_report` wrote: the page's URI and the statistics."""

    index_uri: str
    stats: RunStats


def write_report(output_uri: str, out_uri: str | None = None,
                 storage_options: dict | None = None) -> Report:
    """Write ``index.html`` and ``report.json`` of the output at ``output_uri``.

    Raises:
        UserError: ``output_uri`` is not a finished labeler output.
    """
    try:
        reader = OutputReader.open(Folder(output_uri, storage_options))
        stats = gather(reader)
    except OutputReadError as error:
        raise UserError(str(error)) from None
    out = Folder(out_uri or join_uri(output_uri, "report"), storage_options)
    out.write_bytes("index.html", render_report(stats, reader.info, output_uri).encode())
    out.write_json("report.json", stats.as_json())
    return Report(out.uri_of("index.html"), stats)


def _report(args: argparse.Namespace) -> int:
    report = write_report(args.output, args.out)
    stats = report.stats
    sys.stdout.write(f"report: {stats.images} images ({stats.labeled} labeled, {stats.failed} "
                     f"failed), {stats.annotations} annotations -> {report.index_uri}\n")
    return 0
