"""Dispatch, one function per step type: what starting a step of each type emits.

Pure, like the rest of the core: ``now`` and the state arrive on the Decision.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from engine.core.definition import Step
from engine.core.ids import INSTANCE_ID_RE
from engine.core.language.conditions import evaluate_condition
from engine.core.language.expressions import TemplateError, refuse_markers, render, render_endpoint
from engine.core.language.templates import to_text
from engine.core.model import (
    STEP_PENDING,
    STEP_RETRYING,
    ChildStarted,
    StepCompleted,
    StepDelayed,
    StepScheduled,
    StepSkipped,
    StepWaiting,
)

if TYPE_CHECKING:
    from engine.core.graph import Decision

# Payload values that are exactly one template over the start input read a missing
# (optional) input field as null; see expressions.render.
_INPUTS = frozenset({"input", "context"})

def task_id_for(instance_id: str, step: str, attempt: int, part: int | None = None) -> str:
    base = f"{instance_id}:{step}:{attempt}"
    return base if part is None else f"{base}:{part}"


def idempotency_key(instance_id: str, step: str, run: int, part: int | str | None = None) -> str:
    """``ff:<instance id>/<step>/<run>[/<part>]``: the same for every delivery and automatic
    retry of one run of a step (and per loop item or validation rule). ``/`` is in neither an
    instance id nor a step name, so no two instances' keys can meet."""
    base = f"ff:{instance_id}/{step}/{run}"
    return base if part is None else f"{base}/{part}"


def child_id_for(instance_id: str, step: str, attempt: int) -> str:
    """A sub-workflow's instance id: deterministic, so a repeated start is the same child."""
    child = f"{instance_id}.{step}.{attempt}"
    if INSTANCE_ID_RE.match(child):
        return child
    return "child-" + hashlib.sha1(child.encode()).hexdigest()


class TemplateFailure(Exception):
    """A template or item list that cannot be resolved: the step fails, not the worker."""



def _service_call(d: Decision, step: Step, attempt: int) -> None:
    assert step.service is not None
    scope = d.scope()
    override = d.state.overrides.get(step.name)
    if override is not None:
        refuse_markers(override, "the edited input")
    payload = override if override is not None else (
        render(step.input, scope, _INPUTS, call=True) if step.input is not None else {})
    endpoint = render_endpoint(step.endpoint, scope, payload) if step.endpoint else None
    d.emit(StepScheduled(step=step.name, attempt=attempt, task_id=task_id_for(d.state.id, step.name, attempt),
                         queue=step.service, endpoint=endpoint, input=payload, timeout_at=_timeout(d, step),
                         method=step.method, http=_http(step, scope, payload), run=_run(d, step, attempt)))


def _run(d: Decision, step: Step, attempt: int) -> int | None:
    """The attempt the step's current run began at: kept over retries, restarted by a rewind.
    None when that is this attempt (the event leaves it out)."""
    run = d.state.step(step.name).run
    return None if run is None or run == attempt else run


def _http(step: Step, scope: dict[str, Any], payload: Any) -> dict[str, Any] | None:
    http: dict[str, Any] = {}
    if step.url is not None:
        http["url"] = render_endpoint(step.url, scope, payload, what="url")
    if step.headers:
        headers = {name: _header(name, value, scope) for name, value in step.headers.items()}
        http["headers"] = {name: value for name, value in headers.items() if value is not None}
    if step.retry_on_status:
        http["retry_on_status"] = list(step.retry_on_status)
    if step.success_on_status:
        http["success_on_status"] = list(step.success_on_status)
    if step.follow_redirects:
        http["follow_redirects"] = True
    if step.timeout_ms:
        http["timeout_ms"] = step.timeout_ms
    return http or None


def _header(name: str, template: str, scope: dict[str, Any]) -> str | None:
    """A header's rendered value; None (left out) when it is one template that reads null."""
    value = render(template, scope, call=True)
    if value is None:
        return None
    text = to_text(value)
    if "\r" in text or "\n" in text:
        raise TemplateError(f"header {name} rendered to a value with a line break")
    return text


def _event_wait(d: Decision, step: Step, attempt: int) -> None:
    assert step.event_type is not None
    d.emit(StepWaiting(step=step.name, attempt=attempt, event_type=step.event_type,
                       filter=render(dict(step.event_filter), d.scope()), timeout_at=_timeout(d, step)))


def _conditional(d: Decision, step: Step, attempt: int) -> None:
    assert step.condition is not None
    result = evaluate_condition(step.condition, d.scope())
    taken, other = (step.true_edge, step.false_edge) if result else (step.false_edge, step.true_edge)
    d.emit(StepCompleted(step=step.name, attempt=attempt, output={"result": result, "edge": taken}))
    if other is not None and d.state.step(other).status == STEP_PENDING:
        d.emit(StepSkipped(step=other, attempt=d.state.step(other).attempt, reason=f"conditional {step.name!r} took the {'true' if result else 'false'} "
                                             f"edge to {taken!r}"))


def _delay(d: Decision, step: Step, attempt: int) -> None:
    d.emit(StepDelayed(step=step.name, attempt=attempt, until=d.now + (step.duration_ms or 0)))


def _loop(d: Decision, step: Step, attempt: int) -> None:
    st = d.state.step(step.name)
    if st.items is not None and st.status == STEP_RETRYING:  # retry of the current item
        _loop_item(d, step, attempt, st.iteration, st.items, first=False)
        return
    items = render(step.items, d.scope())
    if not isinstance(items, list):
        raise TemplateFailure(f"items must be a list, got {type(items).__name__}")
    if len(items) > step.max_iterations:
        raise TemplateFailure(f"{len(items)} items, more than max_iterations {step.max_iterations}")
    if not items:
        d.emit(StepCompleted(step=step.name, attempt=attempt, output={"items": []}))
        return
    _loop_item(d, step, attempt, 0, items, first=True)


def _loop_item(d: Decision, step: Step, attempt: int, index: int, items: list[Any], first: bool) -> None:
    assert step.service is not None
    scope = d.scope(item=items[index], index=index)
    if step.input is not None:
        payload = render(step.input, scope, _INPUTS, call=True)
    else:
        payload = {"item": items[index], "index": index}
        refuse_markers(payload, f"item {index}")
    endpoint = render_endpoint(step.endpoint, scope, payload) if step.endpoint else None
    d.emit(StepScheduled(step=step.name, attempt=attempt, task_id=task_id_for(d.state.id, step.name, attempt, index),
                         queue=step.service, endpoint=endpoint, input=payload, timeout_at=_timeout(d, step),
                         iteration=index, items=items if first else None, method=step.method,
                         http=_http(step, scope, payload), run=_run(d, step, attempt)))


def next_loop_item(d: Decision, step: Step) -> None:
    st = d.state.step(step.name)
    assert st.items is not None
    if st.iteration + 1 < len(st.items):
        _loop_item(d, step, st.attempt + 1, st.iteration + 1, st.items, first=False)
    else:
        d.complete_step(step, st.attempt, {"items": list(st.results)})


def _validation(d: Decision, step: Step, attempt: int) -> None:
    scope = d.scope()
    run = _run(d, step, attempt)
    for i, rule in enumerate(step.validation_rules):
        value = scope["input"].get(rule.field) if isinstance(scope["input"], dict) else None
        refuse_markers(value, f"input.{rule.field}")
        payload = {"field": rule.field, "rule": rule.rule, "value": value}
        endpoint = render_endpoint(rule.endpoint, scope, payload) if rule.endpoint else "/validate"
        d.emit(StepScheduled(step=step.name, attempt=attempt, task_id=task_id_for(d.state.id, step.name, attempt, i),
                             queue=rule.service, endpoint=endpoint, timeout_at=_timeout(d, step), iteration=i,
                             input=payload, http=_http(step, scope, payload), run=run))


def _sub_workflow(d: Decision, step: Step, attempt: int) -> None:
    assert step.workflow is not None
    override = d.state.overrides.get(step.name)
    payload = override if override is not None else (
        render(step.input, d.scope(), _INPUTS) if step.input is not None else dict(d.state.context))
    if not isinstance(payload, dict):
        raise TemplateFailure(f"a sub-workflow's input must be an object, got {type(payload).__name__}")
    d.emit(ChildStarted(step=step.name, attempt=attempt, child_id=child_id_for(d.state.id, step.name, attempt),
                        workflow=step.workflow, version=step.workflow_version, input=payload,
                        timeout_at=_timeout(d, step)))


def _timeout(d: Decision, step: Step) -> int | None:
    return d.now + step.timeout_ms if step.timeout_ms else None


DISPATCH = {
    "service_call": _service_call,
    "event_wait": _event_wait,
    "conditional": _conditional,
    "delay": _delay,
    "loop": _loop,
    "validation": _validation,
    "sub_workflow": _sub_workflow,
}
