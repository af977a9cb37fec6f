"""The storage layer: every file labeler reads or writes goes through these modules.

* :mod:`~labeler.io.uris`: URI credentials (moved into storage options), redaction, resolution,
  joining, and opening a filesystem (:func:`~labeler.io.uris.open_fs`).
* :mod:`~labeler.io.retry`: which storage errors are transient; :class:`~labeler.io.retry.RetryPolicy`.
* :mod:`~labeler.io.refs`: :class:`~labeler.io.refs.InputRef` and Parquet row URIs.
* :mod:`~labeler.io.parquet_images`: the Hugging Face ``Image`` layout in Parquet.
* :mod:`~labeler.io.listing`: enumerating collections (folders, manifests, Parquet images) and
  listing files by extension.
* :mod:`~labeler.io.reading`: the bytes of refs and files, one at a time or windowed, with the
  identity of what was read.
* :mod:`~labeler.io.identity`: which version of an input was listed or read (ETag, mtime and
  size, sha256).
* :mod:`~labeler.io.folders`: a folder (a run's output, a report destination) with atomic writes.
* :mod:`~labeler.io.files`: single files by URI (embedding sets, banks, training state): atomic
  writes and checks, with retries; whole folders (checkpoints) between local disk and any URI.
* :mod:`~labeler.io.decode`: the one image decoder (upright RGB, alpha on white).

Imports go one way: ``uris`` <- ``retry`` <- ``parquet_images`` <- ``listing``/``reading``;
``identity`` needs ``uris`` (``listing``/``reading`` use it); ``refs`` and ``decode`` stand
alone; ``folders`` needs only ``uris``; ``files`` needs ``folders`` and ``retry``.
"""
