"""Steps as written: the ``steps`` list, the ``compensation`` block, and each step's fields.

Step fields may sit inline or under ``config:`` (``config`` wins). A step comes
out as a ``Draft``: its dependencies are resolved once every name is known
(linking.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import msgspec

from engine.core.definition.calls import read_call
from engine.core.definition.fields import ANY, OWN, UPSTREAM, At, Owner, Reader, at, kind_of
from engine.core.definition.handlers import on_failure, retry_policy, timeout_action
from engine.core.definition.model import RetryPolicy, Step, ValidationRule
from engine.core.definition.vocabulary import (
    COMPENSATION_FIELDS,
    REQUIRED,
    RULE_FIELDS,
    STEP_FIELDS,
    STEP_NAME,
    STEP_TYPES,
    TYPE_ALIASES,
)

_Find = Callable[..., At]


class Draft(NamedTuple):
    step: Step  # depends_on not resolved yet
    path: str
    declared: tuple[tuple[int, str], ...] | None  # (index, name) as written; None: no depends_on key
    deps_path: str
    on_failure_path: str


def read_steps(r: Reader, body: dict[str, Any], base: str, default_retry: RetryPolicy) -> list[Draft]:
    found, path = at(body, "steps", base), f"{base}.steps" if base else "steps"
    if found is None or not isinstance(found[0], list) or not found[0]:
        r.add(path, "must be a non-empty list of steps")
        return []
    drafts = []
    for i, raw in enumerate(found[0]):
        if isinstance(raw, dict):
            drafts.append(read_step(r, raw, f"{path}[{i}]", default_retry))
        else:
            r.add(f"{path}[{i}]", f"must be an object, got {kind_of(raw)}")
    return drafts


def read_compensation(r: Reader, body: dict[str, Any], base: str, default_retry: RetryPolicy) -> list[Step]:
    found = at(body, "compensation", base)
    if found is None:
        return []
    block = r.mapping(found)
    if block is not None:
        r.closed(block, found[1], COMPENSATION_FIELDS)
    raw_steps = at(block, "steps", found[1]) if block is not None else None
    if raw_steps is None or not isinstance(raw_steps[0], list) or not raw_steps[0]:
        r.add(f"{found[1]}.steps", "must be a non-empty list of steps")
        return []
    steps = []
    for i, raw in enumerate(raw_steps[0]):
        path = f"{raw_steps[1]}[{i}]"
        if not isinstance(raw, dict):
            r.add(path, f"must be an object, got {kind_of(raw)}")
            continue
        draft = read_step(r, raw, path, default_retry, compensation=True)
        if draft.step.type and draft.step.type != "service_call":
            r.add(f"{path}.type", "compensation steps must be service_call steps")
        steps.append(msgspec.structs.replace(draft.step, depends_on=()))
    return steps


def read_step(r: Reader, raw: dict[str, Any], path: str, default_retry: RetryPolicy, *,
              compensation: bool = False) -> Draft:
    config = r.mapping(at(raw, "config", path)) or {}

    def find(*keys: str) -> At:
        for key in keys:
            if (found := at(config, key, f"{path}.config") or at(raw, key, path)) is not None:
                return found
        return None

    r.closed(raw, path, STEP_FIELDS)
    r.closed(config, f"{path}.config", STEP_FIELDS)
    name, kind = step_name(r, find("name"), path), step_type(r, find("type", "step_type"), path)
    for field, needed_by in REQUIRED:
        if kind == needed_by and find(field) is None:
            r.add(f"{path}.{field}", f"required for {needed_by} steps")
    # Compensation runs after the main flow, so it may read any step; a step of the
    # main flow reads its upstream before it runs, and itself too once it ran.
    before, after = Owner(name, ANY if compensation else UPSTREAM), Owner(name, ANY if compensation else OWN)
    step = _step(r, find, name, kind, before, after, default_retry)
    deps = find("depends_on")
    return Draft(step, path, r.names(deps), deps[1] if deps else f"{path}.depends_on", f"{path}.on_failure")


def _step(r: Reader, find: _Find, name: str | None, kind: str | None, before: Owner, after: Owner,
          default_retry: RetryPolicy) -> Step:
    payload, output, event_filter = find("payload", "input"), find("output"), find("filter", "event_filter")
    items = find("items")
    calling = kind in ("service_call", "loop")  # a sub-workflow's input is no call: no secrets there
    for templated, owner, secrets in ((find("endpoint"), before, True), (payload, before, calling),
                                      (output, after, False), (event_filter, before, False),
                                      (items, before, False)):
        if templated is not None:
            r.templates(*templated, owner, secrets=secrets)
    call = read_call(r, find, kind, before)
    condition = r.condition(find("condition"), before)
    on_error, retry = on_failure(r, find("on_failure"), name, after, retry_policy(r, find("retry_policy"), default_retry))
    return Step(
        name=name or "", type=kind or "", description=r.text(find("description")) or "",
        sequence=r.integer(find("sequence")), service=r.service(find("service")),
        endpoint=r.text(find("endpoint")), method=r.text(find("method")),
        input=payload[0] if payload else None, output=output[0] if output else None,
        event_type=r.event_type(find("event_type")), event_filter=r.mapping(event_filter) or {},
        timeout_ms=r.duration(find("timeout", "timeout_ms")), retry_policy=retry, on_error=on_error,
        on_timeout=timeout_action(r, find("on_timeout"), name, after),
        condition=condition, true_edge=r.text(find("true_edge")), false_edge=r.text(find("false_edge")),
        items=items[0] if items else None, max_iterations=r.integer(find("max_iterations"), 1) or 1000,
        validation_rules=_rules(r, find("validation_rules"), before), duration_ms=r.duration(find("duration")),
        workflow=r.text(find("workflow")), workflow_version=r.version_text(find("workflow_version")),
        compensates=r.text(find("compensates")), headers=call.headers, url=call.url,
        retry_on_status=call.retry_on_status, success_on_status=call.success_on_status,
        follow_redirects=call.follow_redirects,
    )


def step_name(r: Reader, found: At, path: str) -> str | None:
    name = r.text(found)
    if found is None:
        r.add(f"{path}.name", "required")
    elif name is not None and not STEP_NAME.fullmatch(name):
        r.add(found[1], f"invalid step name {name!r} (1 to 100 of A-Z a-z 0-9 _ . -)")
    elif name is not None and name in r.seen:
        r.add(found[1], f"duplicate step name {name!r} (first at {r.seen[name]})")
    elif name is not None:
        r.seen[name] = path
        return name
    return None


def step_type(r: Reader, found: At, path: str) -> str | None:
    kind = r.text(found)
    kind = TYPE_ALIASES.get(kind, kind) if kind is not None else None
    if found is None:
        r.add(f"{path}.type", f"required (supported: {', '.join(STEP_TYPES)})")
    elif kind is not None and kind not in STEP_TYPES:
        r.add(found[1], f"unknown step type {found[0]!r} (supported: {', '.join(STEP_TYPES)})")
        return None
    return kind


def _rules(r: Reader, found: At, owner: Owner) -> tuple[ValidationRule, ...]:
    if found is None:
        return ()
    if not isinstance(found[0], list) or not found[0]:
        r.add(found[1], f"must be a non-empty list of rules, got {kind_of(found[0])}")
        return ()
    rules = []
    for i, raw in enumerate(found[0]):
        path = f"{found[1]}[{i}]"
        if not isinstance(raw, dict):
            r.add(path, f"must be an object, got {kind_of(raw)}")
        elif (rule := _rule(r, raw, path, owner)) is not None:
            rules.append(rule)
    return tuple(rules)


def _rule(r: Reader, raw: dict[str, Any], path: str, owner: Owner) -> ValidationRule | None:
    r.closed(raw, path, RULE_FIELDS)
    fields = {k: (r.service if k == "service" else r.text)(at(raw, k, path)) for k in RULE_FIELDS}
    for key in ("field", "rule", "service"):
        if at(raw, key, path) is None:
            r.add(f"{path}.{key}", "required")
    if fields["endpoint"] is not None:
        r.templates(fields["endpoint"], f"{path}.endpoint", owner, secrets=True)
    if fields["field"] and fields["rule"] and fields["service"]:
        return ValidationRule(field=fields["field"], rule=fields["rule"], service=fields["service"],
                              endpoint=fields["endpoint"])
    return None
