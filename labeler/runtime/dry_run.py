"""``labeler run --dry-run``: everything a run checks and plans, and one image timed; nothing written.

The same pre-flight checks as a run (settings, device, output, models, method resources), the
input listed to count images and shards, the output's state (new, resumable, or holding another
configuration), then the model loaded in this process and the first image labeled once, to
estimate the time per image on this device. The output folder is only read.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from labeler.config import JobConfig, recorded_changes
from labeler.io.decode import DEFAULT_MAX_PIXELS, decode_image
from labeler.io.folders import Folder
from labeler.io.reading import read_image_bytes
from labeler.io.refs import InputRef
from labeler.runtime.job import input_items
from labeler.runtime.preflight import preflight


@dataclass(frozen=True)
class DryRunReport:
    """What a run would do.

    Attributes:
        images: images in the input.
        shards: shards of ``shard_size`` they make.
        output_state: ``new``, ``resume`` (same settings) or ``other settings`` (a run would
            refuse without ``--overwrite``), with ``changes`` listing what differs.
        model_seconds: loading the model and the method in this process.
        seconds_per_image: labeling the first image once (None when the input is empty).
        first_image: the URI that was timed.
    """

    images: int
    shards: int
    output_state: str
    changes: list[str]
    model_seconds: float
    seconds_per_image: float | None
    first_image: str | None

    def lines(self, config: JobConfig) -> list[str]:
        """The report, for the terminal."""
        model = config.model_name or "(from its resources)"
        lines = [
            (f"dry run: {self.images} images in {self.shards} shards of {config.shard_size}; "
             f"method {config.method}, model {model}"),
            f"output {config.output}: {self.output_state}",
        ]
        lines += [f"  {change}" for change in self.changes]
        lines.append(f"model loaded in {self.model_seconds:.1f} s")
        if self.seconds_per_image is not None:
            total = self.seconds_per_image * self.images
            lines.append(f"one image ({self.first_image}) in {self.seconds_per_image:.2f} s on this "
                         f"device: about {_duration(total)} for the collection on one worker "
                         "(batching and GPUs are faster)")
        lines.append("nothing was written")
        return lines


def dry_run(config: JobConfig, storage_options: dict | None = None) -> DryRunReport:
    """Check, plan and time one image, without writing anything.

    Raises:
        UserError: what a run would refuse.
    """
    preflight(config, storage_options)
    count, first = 0, None
    for item in input_items(config, storage_options):
        count += 1
        first = first or item["ref"]
    state, changes = _output_state(config, storage_options)
    started = time.perf_counter()
    segmenter = config.build_segmenter()
    model_seconds = time.perf_counter() - started
    seconds = None
    if first is not None:
        ref = InputRef.from_dict(first)
        data = read_image_bytes(ref, storage_options=storage_options)
        pixels = decode_image(data, max_pixels=config.max_pixels or DEFAULT_MAX_PIXELS,
                              needed_side=config.decode_side_for(segmenter)).pixels
        started = time.perf_counter()
        segmenter.label([pixels])
        seconds = time.perf_counter() - started
    return DryRunReport(images=count, shards=math.ceil(count / config.shard_size),
                        output_state=state, changes=changes, model_seconds=model_seconds,
                        seconds_per_image=seconds, first_image=ref.uri if first else None)


def _output_state(config: JobConfig, storage_options: dict | None) -> tuple[str, list[str]]:
    output = Folder(config.output, storage_options)
    if not output.exists("run/config.json"):
        return "new", []
    recorded = output.read_json("run/config.json")
    changes, unrecorded = recorded_changes(recorded.get("settings", {}), config.output_settings())
    if not changes:
        late = f"; {', '.join(unrecorded)} recorded now" if unrecorded else ""
        return f"resume (same settings: finished shards are skipped{late})", []
    return "holds a run with other settings (a run refuses it without --overwrite)", changes


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
