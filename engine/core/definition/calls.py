"""What a step's HTTP call carries: ``headers``, ``url``, ``retry_on_status``,
``success_on_status``, ``follow_redirects``.

The core only validates and renders them; the HTTP executor
(``foldflow activities --http``) makes the call. They sit inline or under
``config:`` like every other step field.
"""

from __future__ import annotations

import re
from typing import Any, Final, NamedTuple

from engine.core.definition.fields import At, Owner, Reader, kind_of
from engine.core.language.expressions import literal_text

CALL_FIELDS: Final = ("headers", "url", "retry_on_status", "success_on_status", "follow_redirects")
CALLING_TYPES: Final = ("service_call", "loop", "validation")
# RFC 9110 token: what a header name may be.
_HEADER_NAME: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,256}")
# The executor sets these itself; a definition that overrode them would break framing,
# routing or deduplication.
_RESERVED: Final = frozenset({"host", "content-length", "transfer-encoding", "connection", "idempotency-key",
                              "traceparent", "x-correlation-id"})
MAX_URL_CHARS: Final = 2048


class CallFields(NamedTuple):
    headers: dict[str, str]
    url: str | None
    retry_on_status: tuple[int, ...]
    success_on_status: tuple[int, ...]
    follow_redirects: bool


def read_call(r: Reader, find: Any, kind: str | None, owner: Owner) -> CallFields:
    """The call fields of one step; ``find`` looks a key up inline or under ``config:``."""
    found = {name: find(name) for name in CALL_FIELDS}
    if kind is not None and kind not in CALLING_TYPES:
        for value in found.values():
            if value is not None:
                r.add(value[1], f"only for steps that call a service ({', '.join(CALLING_TYPES)})")
    retry, success = _statuses(r, found["retry_on_status"]), _statuses(r, found["success_on_status"])
    both = sorted(set(retry) & set(success))
    if both and found["success_on_status"] is not None:
        r.add(found["success_on_status"][1], f"status {both[0]} is also in retry_on_status")
    follow = r.typed(found["follow_redirects"], bool, "true or false")
    return CallFields(headers=_headers(r, found["headers"], owner), url=_url(r, found["url"], owner),
                      retry_on_status=retry, success_on_status=success, follow_redirects=bool(follow))


def _headers(r: Reader, found: At, owner: Owner) -> dict[str, str]:
    raw = r.mapping(found)
    if raw is None or found is None:
        return {}
    headers: dict[str, str] = {}
    for name, value in raw.items():
        path = f"{found[1]}.{name}"
        if not _HEADER_NAME.fullmatch(str(name)):
            r.add(path, f"invalid header name {name!r} (1 to 256 of A-Z a-z 0-9 and !#$%&'*+-.^_`|~)")
        elif name.lower() in _RESERVED:
            r.add(path, f"{name} is set by foldflow's HTTP executor and cannot be given")
        elif not isinstance(value, str):
            r.add(path, f"must be a string (a template is fine), got {kind_of(value)}")
        elif "\r" in value or "\n" in value:
            r.add(path, "must not contain a line break")
        else:
            r.templates(value, path, owner, secrets=True)
            headers[name] = value
    return headers


def _url(r: Reader, found: At, owner: Owner) -> str | None:
    url = r.text(found)
    if url is None or found is None:
        return None
    path = found[1]
    literal = literal_text(url)
    if len(url) > MAX_URL_CHARS:
        r.add(path, f"longer than {MAX_URL_CHARS} characters")
    elif not literal.lower().startswith(("http://", "https://")):
        r.add(path, f"must be an absolute http:// or https:// URL, got {url!r}")
    elif any(c.isspace() for c in literal):
        r.add(path, "must not contain whitespace")
    r.templates(url, path, owner, secrets=True)
    return url


def _statuses(r: Reader, found: At) -> tuple[int, ...]:
    if found is None:
        return ()
    value, path = found
    if not isinstance(value, list):
        r.add(path, f"must be a list of HTTP statuses (100 to 599), got {kind_of(value)}")
        return ()
    statuses = []
    for i, item in enumerate(value):
        if isinstance(item, int) and not isinstance(item, bool) and 100 <= item <= 599:
            statuses.append(item)
        else:
            r.add(f"{path}[{i}]", f"must be an HTTP status from 100 to 599, got {item!r}")
    return tuple(statuses)
