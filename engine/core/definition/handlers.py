"""Retry policies and error handling: ``retry_policy``, ``on_failure``, ``on_timeout``, ``error_handlers``.

A step's ``retry_policy`` fills in the fields it names over the workflow
default, which is ``RetryPolicy()`` (one attempt) unless the workflow sets one.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from engine.core.definition.fields import FLOW, OWN, At, Owner, Reader, at, kind_of
from engine.core.definition.model import ErrorHandler, RetryPolicy
from engine.core.definition.vocabulary import (
    BACKOFF_BASES,
    DEFAULT_JITTER,
    ERROR_ACTIONS,
    HANDLER_ENTRY_FIELDS,
    HANDLER_FIELDS,
    ON_FAILURE_RETRY_FIELDS,
    RETRY_FIELDS,
    TIMEOUT_ACTIONS,
    TIMEOUT_FIELDS,
    UNSUPPORTED_ACTIONS,
)

# Known keys in the wrong place: the reader would never look at them there.
_NOT_FOR_RETRY: Final = {key: "not used by on_failure action 'retry', which sets only max_attempts "
                              "(backoff belongs in retry_policy)"
                         for key in HANDLER_FIELDS if key not in ON_FAILURE_RETRY_FIELDS}
_ONLY_FOR_RETRY: Final = {"max_attempts": "only used with action 'retry'"}
_BESIDE_ON_ERROR: Final = {key: "ignored beside on_error: move it into on_error"
                           for key in HANDLER_FIELDS}
_RETRY_ALIASES: Final = {"backoff_multiplier": "initial_delay", "max_delay_ms": "max_delay"}


def retry_policy(r: Reader, found: At, default: RetryPolicy) -> RetryPolicy:
    raw = r.mapping(found)
    if raw is None or found is None:
        return default
    path, fields = found[1], {}
    r.closed(raw, path, RETRY_FIELDS)
    backoff = r.text(at(raw, "backoff", path))
    if backoff is not None and backoff not in BACKOFF_BASES:
        r.add(f"{path}.backoff", f"unknown backoff {backoff!r} (supported: {', '.join(BACKOFF_BASES)})")
    elif backoff is not None:
        fields["backoff_base"] = BACKOFF_BASES[backoff]
        # The YAML form promises jittered backoff; the JSON fields are exact unless jitter is given.
        fields["jitter"] = DEFAULT_JITTER
    jitter = at(raw, "jitter", path)
    if jitter is not None:
        value = r.number(jitter, 0.0)
        if value is not None and value > 1:
            r.add(jitter[1], f"must be a fraction from 0 to 1, got {value!r}")
        elif value is not None:
            fields["jitter"] = value
    readers = (("max_attempts", lambda f: r.integer(f, 1)), ("backoff_base", lambda f: r.number(f, 1.0)),
               ("backoff_multiplier", r.duration), ("max_delay_ms", r.duration))
    for field, read in readers:
        value = read(at(raw, field, path) or at(raw, _RETRY_ALIASES.get(field, field), path))
        if value is not None:
            fields[field] = value
    return msgspec.structs.replace(default, **fields)


def on_failure(r: Reader, found: At, step: str | None, owner: Owner,
               retry: RetryPolicy) -> tuple[ErrorHandler | None, RetryPolicy]:
    raw = r.mapping(found)
    if raw is None or found is None:
        return None, retry
    if raw.get("action") == "retry":  # a retry here is just the step's attempt budget
        r.closed(raw, found[1], ON_FAILURE_RETRY_FIELDS, _NOT_FOR_RETRY)
        attempts = r.integer(at(raw, "max_attempts", found[1]), 1)
        return None, retry if attempts is None else msgspec.structs.replace(retry, max_attempts=attempts)
    r.closed(raw, found[1], HANDLER_FIELDS, _ONLY_FOR_RETRY)
    return handler(r, raw, found[1], step, owner), retry


def error_handlers(r: Reader, body: dict[str, Any], base: str) -> list[tuple[ErrorHandler, str]]:
    found = at(body, "error_handlers", base)
    if found is None:
        return []
    if not isinstance(found[0], list):
        r.add(found[1], f"must be a list, got {kind_of(found[0])}")
        return []
    handlers = []
    for k, raw in enumerate(found[0]):
        path = f"{found[1]}[{k}]"
        if not isinstance(raw, dict):
            r.add(path, f"must be an object, got {kind_of(raw)}")
        elif (entry := _entry(r, raw, path)) is not None:
            handlers.append((entry, path))
    return handlers


def _entry(r: Reader, raw: dict[str, Any], path: str) -> ErrorHandler | None:
    step = r.text(at(raw, "step", path))
    if step is not None and step not in r.seen:
        r.add(f"{path}.step", f"unknown step {step!r}")
    # A handler without a step serves every step, so its endpoint may name any of them.
    owner = Owner(step if step in r.seen else None, OWN if step is not None else FLOW)
    inner = at(raw, "on_error", path)
    if inner is None:
        r.closed(raw, path, ("step", *HANDLER_FIELDS))
        return handler(r, raw, path, step, owner)
    r.closed(raw, path, HANDLER_ENTRY_FIELDS, _BESIDE_ON_ERROR)
    spec = r.mapping(inner)
    if spec is None:
        return None
    r.closed(spec, inner[1], HANDLER_FIELDS)
    return handler(r, spec, inner[1], step, owner)


def handler(r: Reader, raw: dict[str, Any], path: str, step: str | None, owner: Owner) -> ErrorHandler | None:
    action = _action(r, raw, path)
    if action == "notify" and at(raw, "target", path) is None:
        r.add(f"{path}.target", "required for notify")
    if (endpoint := at(raw, "endpoint", path)) is not None:
        r.templates(*endpoint, owner, secrets=True)  # a notification is a service call too
    seconds = r.number(at(raw, "backoff_seconds", path), 0.0)
    backoff = (r.duration((seconds * 1000, f"{path}.backoff_seconds")) if seconds is not None
               else r.duration(at(raw, "backoff_ms", path) or at(raw, "backoff", path)))
    built = ErrorHandler(
        step=step, action=action or "", max_retries=r.integer(at(raw, "max_retries", path), 0) or 0,
        backoff_ms=backoff or 0, target=r.text(at(raw, "target", path)),
        endpoint=r.text(endpoint), message=r.text(at(raw, "message", path)),
    )
    return built if action in ERROR_ACTIONS else None


def _action(r: Reader, raw: dict[str, Any], path: str) -> str | None:
    action = r.text(at(raw, "action", path))
    supported = ", ".join(ERROR_ACTIONS)
    if at(raw, "action", path) is None:
        r.add(f"{path}.action", f"required (supported: {supported})")
    elif action in UNSUPPORTED_ACTIONS:
        r.add(f"{path}.action", f"action {action!r} is not supported by this version of foldflow (supported: {supported})")
    elif action is not None and action not in ERROR_ACTIONS:
        r.add(f"{path}.action", f"unknown action {action!r} (supported: {supported})")
    return action


def timeout_action(r: Reader, found: At, step: str | None, owner: Owner) -> ErrorHandler | None:
    raw = r.mapping(found)
    if raw is None or found is None:
        return None
    path = found[1]
    r.closed(raw, path, TIMEOUT_FIELDS)
    action = r.text(at(raw, "action", path))
    if action is None or action not in TIMEOUT_ACTIONS:
        r.add(f"{path}.action", f"must be one of {', '.join(TIMEOUT_ACTIONS)}, got {action!r}")
        return None
    if action == "notify" and at(raw, "target", path) is None:
        r.add(f"{path}.target", "required for notify")
    if (endpoint := at(raw, "endpoint", path)) is not None:
        r.templates(*endpoint, owner, secrets=True)  # a notification is a service call too
    return ErrorHandler(step=step, action=action, target=r.text(at(raw, "target", path)),
                        endpoint=r.text(endpoint), message=r.text(at(raw, "message", path)))
