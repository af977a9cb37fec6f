"""A worker of any executor: the model and the method, loaded once, applied to many shards.

A Ray actor (:class:`labeler.runtime.ray_executor.LabelWorker`) and the in-process executor
(:mod:`labeler.runtime.local_executor`) both hold one :class:`ShardWorker`. ``process`` may run
in two threads at once (see :class:`labeler.runtime.shard.ShardProcessor`); it commits the
shard's parts and stats, and the driver writes the completion marker afterwards.
"""

from __future__ import annotations

import os
import socket

from labeler.config import JobConfig
from labeler.io.folders import Folder
from labeler.io.policy import InputPolicy
from labeler.runtime.liveness import LifeSigns, worker_key
from labeler.runtime.postprocess import default_postprocess_threads
from labeler.runtime.shard import ShardProcessor


class ShardWorker:
    """Loads the model and the method (in the constructor), then labels shards.

    Args:
        config: the job (method, model, batch size, decoder limits).
        run_id: the run's fingerprint, recorded with every annotation.
        storage_options: fsspec options for inputs and output (kept in memory, never logged).
        postprocess_threads: threads of the post-processing pool; None: the default for the
            device the model landed on (:func:`labeler.runtime.postprocess.default_postprocess_threads`
            with this machine's CPUs).
        publish_life: publish signs of life for the driver's stall watch (a worker process of
            its own: :mod:`labeler.runtime.liveness`).
    """

    def __init__(self, config: JobConfig, run_id: str, storage_options: dict | None = None,
                 postprocess_threads: int | None = None, publish_life: bool = False) -> None:
        segmenter = config.build_segmenter()
        device = str(segmenter.device)
        if postprocess_threads is None:
            postprocess_threads = default_postprocess_threads(
                config.cpus_per_worker, os.cpu_count(), 1.0, gpu_worker=not device.startswith("cpu"))
        self.info = {"host": socket.gethostname(), "pid": os.getpid(), "device": device}
        self.categories = segmenter.categories
        self.life = (LifeSigns(worker_key(self.info), config.stall_timeout / 4) if publish_life
                     else None)
        self.storage_options = storage_options
        self.processor = ShardProcessor(
            segmenter, config.batch_size, config.max_pixels, run_id, storage_options,
            worker=self.info, postprocess_threads=postprocess_threads,
            policy=InputPolicy.for_input(config.input, config.allow_protocols),
            life=self.life, decode_side=config.decode_side_for(segmenter))
        self._outputs: dict[str, Folder] = {}

    def ready(self) -> dict:
        """Where this worker runs and what it emits (answered once the model is loaded)."""
        return {**self.info, "categories": self.categories}

    def process(self, output_uri: str, shard_id: str, attempt: int,
                read_uris: dict[str, str] | None = None) -> dict:
        """Label one shard of the run at ``output_uri``; commit parts, stats and log.
        ``read_uris``: the full URIs of its entries stored redacted (redacted -> full)."""
        output = self._outputs.get(output_uri)
        if output is None:
            output = self._outputs[output_uri] = Folder(output_uri, self.storage_options)
        return self.processor.process(output, shard_id, attempt, read_uris)

    def close(self) -> None:
        """Stop the post-processing threads (a worker process that exits needs not call it)."""
        self.processor.close()
        if self.life is not None:
            self.life.close()
