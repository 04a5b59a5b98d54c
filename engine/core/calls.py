"""The call meta a step result may carry: what the HTTP call looked like.

``step.completed`` and ``step.failed`` take an optional ``call`` object
``{method, url, status, duration_ms, headers, body}``; it lands on the step's
event and in the steps read model. It is kept to known keys of the right type
and to MAX_CALL_BYTES, trimmed rather than refused: a result must never be lost
over its diagnostics.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

MAX_BODY_CHARS: Final = 2048  # the executor cuts the body to this; longer ones are cut here too
MAX_CALL_BYTES: Final = 8192
MAX_HEADERS: Final = 50
_MAX_TEXT: Final = {"method": 16, "url": 2048}
_MAX_HEADER_CHARS: Final = 512


def call_meta(raw: Any) -> dict[str, Any] | None:
    """``raw`` bounded: known keys of the right type only, at most MAX_CALL_BYTES as JSON."""
    if not isinstance(raw, dict):
        return None
    out: dict[str, Any] = {}
    for key, limit in _MAX_TEXT.items():
        if isinstance(raw.get(key), str):
            out[key] = raw[key][:limit]
    status, duration = raw.get("status"), raw.get("duration_ms")
    if isinstance(status, int) and not isinstance(status, bool) and 100 <= status <= 599:
        out["status"] = status
    if isinstance(duration, (int, float)) and not isinstance(duration, bool) and 0 <= duration < 2**53:
        out["duration_ms"] = int(duration)
    headers = raw.get("headers")
    if isinstance(headers, dict):
        out["headers"] = {str(k)[:_MAX_HEADER_CHARS]: v[:_MAX_HEADER_CHARS]
                          for k, v in list(headers.items())[:MAX_HEADERS] if isinstance(v, str)}
    if isinstance(raw.get("body"), str):
        out["body"] = raw["body"][:MAX_BODY_CHARS]
    return _within(out) if out else None


def _within(out: dict[str, Any]) -> dict[str, Any]:
    """Over the limit: drop headers from the end, then the body (only text can be that long)."""
    while len(orjson.dumps(out)) > MAX_CALL_BYTES:
        if out.get("headers"):
            out["headers"] = dict(list(out["headers"].items())[:-1])
        elif "body" in out:
            del out["body"]
        else:
            break
    return out
