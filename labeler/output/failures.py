"""Which failed images may succeed on a re-run (``retryable``) and which never will.

Every failed row of ``images.parquet`` carries ``retryable``: true for failures that depend on the
moment (storage unreachable or an object not there yet, a timeout, the accelerator out of memory),
false for failures that depend on the bytes (they are not an image, are truncated, too large...)
or on the method (it raised on that image). A re-run redoes the shards that hold retryable
failures (``labeler run --retry-failed``, the default), with the same image ids.
"""

from __future__ import annotations

from labeler.io.decode import DECODE_FAILURE_REASONS
from labeler.io.policy import protocol_of

#: ``reason`` of an image that does not fit in accelerator memory even alone.
OUT_OF_MEMORY = "out_of_memory"
#: ``reason`` of an image the method raised on (while the rest of its batch labeled).
METHOD_ERROR = "method_error"
#: ``reason`` of an image whose host work after the model (relabel, resize, encode) raised.
POSTPROCESS_ERROR = "postprocess_error"
#: ``reason`` of an image whose bytes could not be read after the reader's own retries (storage
#: unreachable, timed out, the object missing).
READ_ERROR = "read_error"

#: ``reason`` of a local file that is not there (a manifest naming a file that does not exist):
#: a local disk has no eventual consistency, so a re-run would fail the same way.
MISSING_FILE = "missing_file"

#: Failures that may heal on a re-run.
RETRYABLE_REASONS = frozenset({READ_ERROR, OUT_OF_MEMORY})
#: Failures that a re-run would repeat: every decoder verdict, and the method's own errors.
PERMANENT_REASONS = frozenset(DECODE_FAILURE_REASONS | {METHOD_ERROR, POSTPROCESS_ERROR,
                                                         MISSING_FILE})


def read_failure_reason(error: BaseException, uri: str) -> str:
    """The ``reason`` of an image whose bytes could not be read.

    A local file that does not exist is :data:`MISSING_FILE` (permanent); everything else,
    an object store's missing key included (it may appear: listings and manifests can run ahead
    of uploads), is :data:`READ_ERROR` (retryable).
    """
    if isinstance(error, FileNotFoundError) and protocol_of(uri) == "file":
        return MISSING_FILE
    return READ_ERROR


def is_retryable(reason: str) -> bool:
    """Whether an image that failed with ``reason`` may succeed on a re-run.

    Reasons outside both sets (a newer labeler's) count as permanent: a re-run is never
    started for a failure nobody has said can heal.
    """
    return reason in RETRYABLE_REASONS
