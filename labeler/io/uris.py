"""Small helpers for URIs that may carry credentials."""

from __future__ import annotations

import re

_USERINFO = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@]+@")


def redact_uri(uri: str) -> str:
    """``s3://KEY:SECRET@bucket/x`` -> ``s3://***@bucket/x``; other URIs unchanged."""
    return _USERINFO.sub(r"\1***@", uri)
