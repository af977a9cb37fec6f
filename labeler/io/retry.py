"""Which storage errors are worth retrying, and the backoff that retries them.

:func:`is_transient_error` classifies an exception: connection errors, timeouts, HTTP 429/5xx,
``SlowDown``, plain ``OSError`` from s3fs are transient; ``FileNotFoundError``,
``PermissionError`` and other client errors are not. Disk faults (:data:`DISK_FAULT_ERRNOS`: a
full disk or quota, a read-only filesystem, no permission) are permanent: waiting does not free
space, so :func:`disk_fault` finds them for a caller that stops at once. :class:`RetryPolicy` retries transient
errors with capped exponential backoff and jitter. s3fs/botocore also retry internally, so the
total number of HTTP attempts can be larger than ``RetryPolicy.attempts``.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, TypeVar

from labeler.io.uris import redact_text, redact_uri

__all__ = ["DEFAULT_RETRY", "DISK_FAULT_ERRNOS", "RetryPolicy", "describe_disk_fault", "disk_fault", "is_transient_error"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

DISK_FAULT_ERRNOS: Final[frozenset[int]] = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
)
"""Errors of the storage itself, never of one file: a full disk or quota, read-only, no permission."""

_PERMANENT_ERRNOS: Final[frozenset[int]] = DISK_FAULT_ERRNOS | frozenset(
    {
        errno.ENOENT,
        errno.EISDIR,
        errno.ENOTDIR,
        errno.EINVAL,
        errno.ENAMETOOLONG,
        errno.EEXIST,
    }
)
_TRANSIENT_CODES: Final[frozenset[str]] = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "TooManyRequests",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
        "ServerBusy",
        "503",
        "500",
        "502",
        "504",
        "429",
    }
)
_TRANSIENT_NAME_PARTS: Final[tuple[str, ...]] = (
    "ConnectionError",  # botocore EndpointConnectionError, ConnectionClosedError, aiohttp
    "ConnectorError",
    "ServerDisconnected",
    "Timeout",  # ReadTimeoutError, ConnectTimeoutError, asyncio/FSTimeoutError
    "IncompleteRead",
    "ResponseStreamingError",
    "ClientPayloadError",
    "ProtocolError",
    "RemoteDisconnected",
)


def _status_and_code(exc: BaseException) -> tuple[int | None, str | None]:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        meta = response.get("ResponseMetadata") or {}
        error = response.get("Error") or {}
        status = meta.get("HTTPStatusCode")
        return (int(status) if isinstance(status, int) else None), error.get("Code")
    status = getattr(exc, "status", None) or getattr(exc, "code", None)
    valid = isinstance(status, int) and not isinstance(status, bool) and 100 <= status <= 599
    return (status if valid else None), None


def _specific_verdict(exc: BaseException) -> bool | None:
    """True/False when ``exc`` itself says whether it is transient; None when it does not."""
    if isinstance(
        exc,
        (
            FileNotFoundError,
            PermissionError,
            IsADirectoryError,
            NotADirectoryError,
            FileExistsError,
        ),
    ):
        return False
    if isinstance(exc, OSError) and exc.errno in DISK_FAULT_ERRNOS:
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    names = [cls.__name__ for cls in type(exc).__mro__]
    if any(part in name for name in names for part in _TRANSIENT_NAME_PARTS):
        return True
    status, code = _status_and_code(exc)
    if code in _TRANSIENT_CODES:
        return True
    if status is not None and status >= 400:
        return status == 429 or status >= 500
    text = str(exc)
    if "SlowDown" in text or "reduce your request rate" in text:
        return True
    if isinstance(exc, OSError) and exc.errno in _PERMANENT_ERRNOS:
        return False
    return None


def _exception_chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        if current.__cause__ is not None:
            current = current.__cause__
        elif current.__suppress_context__:
            current = None
        else:
            current = current.__context__
    return chain


def disk_fault(exc: BaseException) -> OSError | None:
    """The disk fault (an ``OSError`` with an errno of :data:`DISK_FAULT_ERRNOS`) behind ``exc``.

    The ``__cause__``/``__context__`` chain is searched; None when ``exc`` is no disk fault.
    """
    for item in _exception_chain(exc):
        if isinstance(item, OSError) and item.errno in DISK_FAULT_ERRNOS:
            return item
    return None


def describe_disk_fault(fault: OSError) -> str:
    """One line for a disk fault: what happened and where (credentials redacted)."""
    what = (fault.strerror or os.strerror(fault.errno or 0)).lower()
    where = f": {redact_uri(str(fault.filename))}" if fault.filename else ""
    return f"{what}{where}"


def is_transient_error(exc: BaseException) -> bool:
    """Whether retrying the operation that raised ``exc`` may succeed.

    Transient: connection errors, timeouts, HTTP 429 and 5xx, S3 ``SlowDown``/``InternalError``/
    ``ServiceUnavailable``, and other ``OSError`` (what s3fs raises for unclassified service
    errors, unless its cause shows a 4xx status). Permanent: ``FileNotFoundError``,
    ``PermissionError``, directory errors, HTTP 4xx, ``ValueError``/``TypeError`` and everything
    not recognised. The ``__cause__``/``__context__`` chain is consulted when the exception
    itself does not decide.
    """
    chain = _exception_chain(exc)
    for item in chain:
        verdict = _specific_verdict(item)
        if verdict is not None:
            return verdict
    return any(isinstance(item, OSError) for item in chain)


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with jitter for transient storage errors.

    The n-th retry (n = 1, 2, ...) waits ``min(max_delay, base_delay * 2 ** (n - 1))`` seconds,
    multiplied by a random factor in ``[1 - jitter, 1]``. ``attempts`` counts the first try.
    ``on_retry(attempt, error)`` (optional) is called after each failed attempt that will be
    retried, before the wait: a hook for metrics, and for tests that react to a failure.
    """

    attempts: int = 5
    base_delay: float = 0.2
    max_delay: float = 10.0
    jitter: float = 0.5
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False, compare=False)
    on_retry: Callable[[int, BaseException], None] | None = field(
        default=None, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be >= 1")
        if self.base_delay < 0 or self.max_delay < 0 or not 0 <= self.jitter <= 1:
            raise ValueError("delays must be >= 0 and jitter within [0, 1]")

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        base = min(self.max_delay, self.base_delay * (2 ** (retry - 1)))
        return base * (1.0 - self.jitter * random.random())

    def call(self, fn: Callable[[], T], *, what: str) -> T:
        """Run ``fn``, retrying transient errors; ``what`` (already redacted) is for the logs."""
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except Exception as exc:
                if attempt >= self.attempts or not is_transient_error(exc):
                    raise
                wait = self.delay(attempt)
                logger.warning(
                    "transient error on %s (attempt %d of %d), retrying in %.2fs: %s",
                    what,
                    attempt,
                    self.attempts,
                    wait,
                    redact_text(f"{type(exc).__name__}: {exc}"),
                )
                if self.on_retry is not None:
                    self.on_retry(attempt, exc)
                self.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover


DEFAULT_RETRY: Final[RetryPolicy] = RetryPolicy()
