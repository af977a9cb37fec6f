"""The export formats by name: the one table ``labeler export`` and the merge look formats up in."""

from __future__ import annotations

from labeler.output.exporters.base import Exporter
from labeler.output.exporters.coco import CocoRleExporter

#: Format name -> exporter. A new format: one module in this package, one entry here.
EXPORTERS: dict[str, Exporter] = {exporter.name: exporter for exporter in (CocoRleExporter(),)}
#: What the merge of a run writes beside images.parquet and annotations/.
DEFAULT_FORMATS = ("coco-rle",)


class UnknownFormatError(ValueError):
    """No exporter of that name."""


def get_exporter(name: str) -> Exporter:
    """The exporter named ``name``; :class:`UnknownFormatError` lists the known ones otherwise."""
    try:
        return EXPORTERS[name]
    except KeyError:
        raise UnknownFormatError(
            f"unknown export format {name!r} (known: {', '.join(sorted(EXPORTERS))})"
        ) from None
