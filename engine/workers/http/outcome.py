"""What an HTTP answer means for the step: completed, a retryable failure, or a
failure that retrying cannot fix. Pure: the executor hands in what it saw.

Retryable: connection errors, timeouts, 408, 425, 429 and 5xx, plus a step's
``retry_on_status``; a ``Retry-After`` header becomes the floor of the next
backoff. Success: 2xx plus a step's ``success_on_status``. Anything else (other
4xx, an unfollowed 3xx) fails the attempt for good, with the status and the start
of the body in the error.
"""

from __future__ import annotations

import email.utils
from collections.abc import Collection
from typing import Any

import orjson

RETRYABLE = frozenset({408, 425, 429})
ERROR_BODY_CHARS = 500
MAX_RETRY_AFTER_MS = 24 * 3_600_000


def succeeded(status: int, success_on: Collection[int]) -> bool:
    return 200 <= status < 300 or status in success_on


def retryable(status: int, retry_on: Collection[int]) -> bool:
    return status in RETRYABLE or 500 <= status < 600 or status in retry_on


def parsed_body(body: bytes, content_type: str | None) -> Any:
    """The step's output: the JSON body, or its text when it is not JSON (None when empty)."""
    if not body:
        return None
    if content_type is None or "json" in content_type or body[:1] in (b"{", b"["):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
    return body.decode("utf-8", "replace")


def retry_after_ms(value: str | None, now_s: float) -> int | None:
    """Retry-After as delay-seconds or an HTTP date (RFC 9110 10.2.3); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(int(value) * 1000, MAX_RETRY_AFTER_MS)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0, min(int((when.timestamp() - now_s) * 1000), MAX_RETRY_AFTER_MS))


def status_error(status: int, reason: str, body_text: str, retry: bool, method: str, shown_url: str,
                 after_ms: int | None) -> dict[str, Any]:
    head = body_text[:ERROR_BODY_CHARS] + ("…" if len(body_text) > ERROR_BODY_CHARS else "")
    message = f"{method} {shown_url} answered HTTP {status} {reason}".rstrip()
    if 300 <= status < 400:
        message += " (redirects are not followed unless the step sets follow_redirects)"
    if head.strip():
        message += f": {head.strip()}"
    error: dict[str, Any] = {"message": message, "retryable": retry, "kind": "http", "status": status}
    if after_ms is not None and retry:
        error["retry_after_ms"] = after_ms
    return error
