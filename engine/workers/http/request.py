"""The request a task becomes: method, URL, headers and body, each with its
secrets filled in, and the same request as recorded (secrets left as markers).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, NamedTuple
from urllib.parse import quote

import orjson

from engine.core.model import Task
from engine.workers.http.secrets import Secrets

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
_BODILESS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Set by the executor; a definition or a registry record cannot replace them.
_OWN = frozenset({"idempotency-key", "x-correlation-id", "traceparent", "content-length", "host",
                  "transfer-encoding", "connection"})


class BadRequest(Exception):
    """The task cannot become a request (a bad method, header, URL or secret): not retryable."""


class Request(NamedTuple):
    method: str
    url: str
    shown_url: str  # as recorded: secrets as markers
    headers: dict[str, str]
    body: bytes | None
    follow_redirects: bool
    own_headers: frozenset[str]  # the names that stay on a redirect to another origin


def join(base: str, endpoint: str | None) -> str:
    if not endpoint:
        return base
    if endpoint.startswith(("http://", "https://")):
        raise BadRequest(f"endpoint {endpoint!r} must be a path; give an absolute address as the step's url")
    return base.rstrip("/") + ("" if endpoint.startswith(("/", "?")) else "/") + endpoint


def build(task: Task, base_url: str, service_headers: Mapping[str, str], secrets: Secrets) -> Request:
    http: Mapping[str, Any] = task.http or {}
    method = (task.method or "POST").upper()
    if method not in METHODS:
        raise BadRequest(f"method {task.method!r} is not one of {', '.join(sorted(METHODS))}")
    shown = join(base_url, task.endpoint)
    url = secrets.fill(shown, lambda v: quote(v, safe=""))
    if not url.startswith(("http://", "https://")):
        raise BadRequest(f"{shown!r} is not an http(s) URL")
    headers = {"Content-Type": "application/json", "Accept": "application/json, */*;q=0.5",
               "User-Agent": "foldflow-http"}
    for source in (service_headers, http.get("headers") or {}):
        for name, value in source.items():
            if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
                raise BadRequest(f"header name {name!r} is not a valid HTTP header name")
            if name.lower() in _OWN:
                continue
            filled = secrets.fill(str(value))
            if "\r" in filled or "\n" in filled or "\0" in filled:
                raise BadRequest(f"header {name!r} has a line break or NUL in its value")
            headers[name] = filled
    own = {"Idempotency-Key": task.idempotency_key or task.task_id,
           "X-Correlation-ID": task.correlation_id or task.instance_id}
    if task.traceparent:
        own["traceparent"] = task.traceparent
    headers.update(own)
    return Request(method, url, secrets.redact(shown), headers, _body(task, method, secrets),
                   bool(http.get("follow_redirects")), frozenset(k.lower() for k in (*own, "Content-Type", "Accept",
                                                                                      "User-Agent")))


def _body(task: Task, method: str, secrets: Secrets) -> bytes | None:
    payload = task.input
    if payload in (None, {}):
        # A step without a payload: the task's input and context, unless the method has no body.
        return None if method in _BODILESS else orjson.dumps({"input": payload or {}, "context": task.context})
    # Only a step's own payload (rendered from its definition) may ask for secrets: a notification's
    # input carries instance data, which must never be able to pull a secret out (streams.md).
    return orjson.dumps(secrets.fill_json(payload) if task.kind == "step" else payload)
