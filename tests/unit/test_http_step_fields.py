"""What a service-call step carries onto the wire for the HTTP executor: the call
fields of a definition, secrets left as markers, endpoint placeholders and their
URL encoding, the run behind the Idempotency-Key, the traceparent, and the call
meta of a result (issue 13)."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest

from engine.core.codec import decode_command_entry, decode_task_entry
from engine.core.decide import decide, decide_and_fold
from engine.core.definition import Definition, DefinitionError, parse_definition
from engine.core.evolve import fold
from engine.core.language.expressions import render, render_endpoint
from engine.core.language.templates import SECRET_MARKER
from engine.core.model import (
    INITIAL,
    AnyCommand,
    CompleteStep,
    Envelope,
    Event,
    FailStep,
    FireTimer,
    RetryWorkflow,
    StartWorkflow,
    State,
    StepCompleted,
    StepError,
    StepFailed,
    StepScheduled,
    WorkflowCreated,
    encode,
)
from engine.errors import PoisonMessage
from engine.store.keys import Keys
from engine.store.plan import plan
from projections.base import Applied
from projections.steps import fold_steps

IID = "i-1"
T0 = 1_700_000_000_000
KEYS = Keys(prefix="ff", partitions=8)
TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
BOOM = StepError(message="503 Service Unavailable")
_ids = itertools.count(1)


def bare(*steps: dict[str, Any]) -> Definition:
    return parse_definition({"steps": list(steps)}, name="t", version="1")


def svc(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "type": "service_call", "service": "svc", **fields}


def problems(*steps: dict[str, Any]) -> list[str]:
    with pytest.raises(DefinitionError) as caught:
        bare(*steps)
    return [f"{p.path}: {p.message}" for p in caught.value.problems]


def step(state: State, command: AnyCommand, definition: Definition, now: int = T0) -> tuple[list[Event], State]:
    envelope = Envelope(instance_id=IID, entry_id=f"{next(_ids)}-0", command=command)
    return decide_and_fold(state, envelope, definition, now)


def start(definition: Definition, context: dict[str, Any] | None = None,
          traceparent: str | None = None) -> tuple[list[Event], State]:
    return step(INITIAL, StartWorkflow(workflow="t", context=context or {}, traceparent=traceparent), definition)


def scheduled(events: list[Event]) -> list[StepScheduled]:
    return [e for e in events if isinstance(e, StepScheduled)]


def tasks(before: State, events: list[Event]) -> list[dict[str, Any]]:
    return [orjson.loads(data) for *_, data in plan(before, events, KEYS, 0).tasks]


# ---------------------------------------------------------------------------
# 1. Definition fields
# ---------------------------------------------------------------------------
def test_the_call_fields_parse_inline_and_under_config() -> None:
    definition = bare(svc("a", headers={"X-Api-Key": "{{ secrets.API_KEY }}", "X-Tenant": "{{ input.tenant }}"},
                          url="https://api.example.com/v1", retry_on_status=[409], success_on_status=[404],
                          follow_redirects=True),
                      svc("b", config={"headers": {"Accept": "text/plain"}, "url": "http://{{ input.host }}:8080"}))
    a, b = definition.step("a"), definition.step("b")
    assert a.headers == {"X-Api-Key": "{{ secrets.API_KEY }}", "X-Tenant": "{{ input.tenant }}"}
    assert (a.url, a.retry_on_status, a.success_on_status, a.follow_redirects) == (
        "https://api.example.com/v1", (409,), (404,), True)
    assert (b.headers, b.url, b.follow_redirects) == ({"Accept": "text/plain"}, "http://{{ input.host }}:8080", False)


@pytest.mark.parametrize(("fields", "expected"), [
    ({"headers": ["X-A"]}, "steps[0].headers: must be an object, got a list"),
    ({"headers": {"X A": "1"}}, "steps[0].headers.X A: invalid header name 'X A'"),
    ({"headers": {"X-A": 1}}, "steps[0].headers.X-A: must be a string (a template is fine), got an integer"),
    ({"headers": {"X-A": "a\r\nX-B: b"}}, "steps[0].headers.X-A: must not contain a line break"),
    ({"headers": {"Idempotency-Key": "k"}}, "steps[0].headers.Idempotency-Key: Idempotency-Key is set by"),
    ({"headers": {"X-A": "{{ nope.x }}"}}, "steps[0].headers.X-A: unknown root 'nope'"),
    ({"url": "ftp://example.com"}, "steps[0].url: must be an absolute http:// or https:// URL"),
    ({"url": "{{ input.base }}/x"}, "steps[0].url: must be an absolute http:// or https:// URL"),
    ({"url": "/relative"}, "steps[0].url: must be an absolute http:// or https:// URL"),
    ({"url": 7}, "steps[0].url: must be a string, got an integer"),
    ({"retry_on_status": [409, 600]}, "steps[0].retry_on_status[1]: must be an HTTP status from 100 to 599, got 600"),
    ({"retry_on_status": 409}, "steps[0].retry_on_status: must be a list of HTTP statuses"),
    ({"success_on_status": [True]}, "steps[0].success_on_status[0]: must be an HTTP status from 100 to 599, got True"),
    ({"retry_on_status": [404], "success_on_status": [404]},
     "steps[0].success_on_status: status 404 is also in retry_on_status"),
    ({"follow_redirects": "yes"}, "steps[0].follow_redirects: must be true or false, got a string"),
    ({"config": {"follow_redirect": True}}, "steps[0].config.follow_redirect: unknown field 'follow_redirect' "
                                            "(did you mean 'follow_redirects'?)"),
    ({"header": {"X-A": "1"}}, "steps[0].header: unknown field 'header' (did you mean 'headers'?)"),
])
def test_each_call_field_is_checked_with_its_path(fields: dict[str, Any], expected: str) -> None:
    found = problems(svc("a", **fields))
    assert any(p.startswith(expected) for p in found), found


def test_call_fields_are_refused_on_steps_that_call_nothing() -> None:
    found = problems({"name": "w", "type": "delay", "duration": "1s", "headers": {"X-A": "1"}})
    assert found == ["steps[0].headers: only for steps that call a service (service_call, loop, validation)"]


def test_secrets_are_refused_outside_a_call() -> None:
    found = problems(svc("a", output={"k": "{{ secrets.KEY }}"}),
                     {"name": "w", "type": "event_wait", "event_type": "e", "filter": {"k": "{{ secrets.KEY }}"}})
    assert "steps[0].output.k: secrets.KEY: secrets may be used only in a service call's headers, endpoint, url " \
           "and payload" in found
    assert any(p.startswith("steps[1].filter.k: secrets.KEY") for p in found)
    assert any("unknown name 'secrets'" in p for p in problems(svc("a", condition="secrets.KEY == 'x'")))


def test_a_bad_secret_reference_is_a_definition_error_naming_it() -> None:
    found = problems(svc("a", payload={"k": "{{ secrets.my-key }}"}, headers={"X": "{{ secrets.a.b }}"}))
    assert any("steps[0].payload.k: invalid secret reference 'secrets.my-key'" in p for p in found), found
    assert any("steps[0].headers.X: invalid secret reference 'secrets.a.b'" in p for p in found), found


# ---------------------------------------------------------------------------
# 2. Secrets pass through unresolved
# ---------------------------------------------------------------------------
SECRET_DEF = bare(svc("a", endpoint="/keys/{{ secrets.PATH_KEY }}/{{ input.user }}",
                      url="https://{{ secrets.HOST }}.example.com",
                      headers={"Authorization": "Bearer {{ secrets.API_TOKEN }}", "X-Whole": "{{secrets.RAW}}"},
                      payload={"token": "{{ secrets.API_TOKEN }}", "user": "{{ input.user }}"}))


def test_secrets_render_to_their_marker_everywhere_and_no_value_is_written() -> None:
    events, _ = start(SECRET_DEF, {"user": "a/b c"})
    (event,) = scheduled(events)
    assert event.endpoint == "/keys/{{ secrets.PATH_KEY }}/a%2Fb%20c"
    assert event.input == {"token": "{{ secrets.API_TOKEN }}", "user": "a/b c"}
    assert event.http == {"url": "https://{{ secrets.HOST }}.example.com",
                          "headers": {"Authorization": "Bearer {{ secrets.API_TOKEN }}",
                                      "X-Whole": "{{ secrets.RAW }}"}}
    wire = encode(event).decode()
    assert sorted(SECRET_MARKER.findall(wire)) == ["API_TOKEN", "API_TOKEN", "HOST", "PATH_KEY", "RAW"]


def test_instance_data_that_reads_as_a_secret_marker_fails_the_step() -> None:
    events, state = start(SECRET_DEF, {"user": "{{ secrets.API_TOKEN }}"})
    assert not scheduled(events)
    failed = next(e for e in events if isinstance(e, StepFailed))
    assert failed.error.kind == "template" and "reads as a secret reference" in failed.error.message
    assert state.status == "failed"


def test_an_edited_input_that_asks_for_a_secret_is_refused() -> None:
    definition = bare(svc("a"))
    _, state = start(definition)
    _, state = step(state, FailStep(step="a", attempt=1, error=StepError(message="no", retryable=False)), definition)
    events, _ = step(state, RetryWorkflow(from_step="a", input={"x": "{{ secrets.DB }}"}), definition)
    assert [type(e).__name__ for e in events] == ["CommandRejected"]


def test_render_leaves_the_marker_for_a_value_that_is_exactly_one_secret() -> None:
    assert render("{{ secrets.KEY }}", {}) == "{{ secrets.KEY }}"
    assert render("${secrets.KEY}", {}) == "{{ secrets.KEY }}"


# ---------------------------------------------------------------------------
# 3. Endpoint placeholders
# ---------------------------------------------------------------------------
def test_a_placeholder_reads_the_context_first_then_the_step_input() -> None:
    scope = {"context": {"task_id": "t-1"}}
    assert render_endpoint("/tasks/{task_id}/{kind}", scope, {"task_id": "other", "kind": "prep"}) == \
        "/tasks/t-1/prep"


def test_every_substituted_value_is_url_encoded_as_a_path_segment() -> None:
    scope = {"context": {"id": "a/b c"}, "steps": {"s": {"output": {"n": "x?y#z"}}}}
    assert render_endpoint("/u/{id}/{{ steps.s.output.n }}", scope) == "/u/a%2Fb%20c/x%3Fy%23z"


@pytest.mark.parametrize(("endpoint", "context", "spelled"), [
    ("/tasks/{task_id}/prepare", {}, "{task_id}"),
    ("/tasks/{task_id}/prepare", {"task_id": None}, "{task_id}"),
    ("/u/{{ input.user_id }}/activate", {"user_id": None}, "{{ input.user_id }}"),
])
def test_a_placeholder_that_resolves_to_nothing_fails_the_step_naming_it(
        endpoint: str, context: dict[str, Any], spelled: str) -> None:
    events, state = start(bare(svc("a", endpoint=endpoint)), context)
    failed = next(e for e in events if isinstance(e, StepFailed))
    assert failed.error.message == f"cannot render step 'a': placeholder {spelled} in endpoint {endpoint!r} " \
                                   "resolved to nothing"
    assert failed.error.kind == "template" and not failed.error.retryable
    assert state.status == "failed"  # the step failed, not the worker


def test_a_step_payload_fills_an_endpoint_placeholder() -> None:
    events, _ = start(bare(svc("a", endpoint="/orders/{order}", payload={"order": "{{ input.o }}"})), {"o": "7 8"})
    assert scheduled(events)[0].endpoint == "/orders/7%208"


def test_a_validation_rule_posts_to_validate_by_default() -> None:
    definition = bare({"name": "v", "type": "validation", "validation_rules": [
        {"field": "email", "rule": "unique_email", "service": "user-service"}]})
    (event,) = scheduled(start(definition, {"email": "ada@x"})[0])
    assert (event.endpoint, event.input) == ("/validate", {"field": "email", "rule": "unique_email", "value": "ada@x"})


# ---------------------------------------------------------------------------
# 4. The wire: http, run, idempotency key, traceparent
# ---------------------------------------------------------------------------
def test_step_scheduled_carries_only_the_http_keys_that_are_set() -> None:
    definition = bare(svc("a", retry_on_status=[409], success_on_status=[404], follow_redirects=True,
                          timeout="5s"), svc("b", depends_on=["a"]))
    (event,) = scheduled(start(definition)[0])
    assert event.http == {"retry_on_status": [409], "success_on_status": [404], "follow_redirects": True,
                          "timeout_ms": 5000}
    assert orjson.loads(encode(event))["http"] == event.http
    assert bare(svc("c")).step("c").headers == {}
    assert scheduled(start(bare(svc("c")))[0])[0].http is None


RETRYING = bare(svc("a", retry_policy={"max_attempts": 3, "backoff_multiplier": 10}), svc("b", depends_on=["a"]))


def _keys(before: State, events: list[Event]) -> list[str]:
    return [t["idempotency_key"] for t in tasks(before, events)]


def test_the_idempotency_key_is_stable_across_automatic_retries() -> None:
    events, state = start(RETRYING)
    keys = _keys(INITIAL, events)
    for attempt in (1, 2):
        _, state = step(state, FailStep(step="a", attempt=attempt, error=BOOM), RETRYING)
        before = state
        events, state = step(state, FireTimer(kind="retry", step="a", attempt=attempt), RETRYING, T0 + 10_000)
        assert [e.attempt for e in scheduled(events)] == [attempt + 1]
        keys += _keys(before, events)
    assert keys == ["ff:i-1/a/1"] * 3


def test_a_plain_workflow_retry_keeps_the_run_and_a_rewind_starts_a_new_one() -> None:
    events, state = start(RETRYING)
    for attempt in (1, 2, 3):
        _, state = step(state, FailStep(step="a", attempt=attempt, error=BOOM), RETRYING)
        if attempt < 3:
            _, state = step(state, FireTimer(kind="retry", step="a", attempt=attempt), RETRYING, T0 + 10_000)
    assert state.status == "failed"
    before = state
    events, state = step(state, RetryWorkflow(), RETRYING)
    assert [(e.attempt, e.run) for e in scheduled(events)] == [(4, 1)]
    assert _keys(before, events) == ["ff:i-1/a/1"]
    _, state = step(state, CompleteStep(step="a", attempt=4), RETRYING)
    _, state = step(state, FailStep(step="b", attempt=1, error=StepError(message="x", retryable=False)), RETRYING)
    before = state
    events, state = step(state, RetryWorkflow(from_step="a"), RETRYING)
    assert [(e.attempt, e.run) for e in scheduled(events)] == [(5, None)]  # run 5: the attempt itself
    assert _keys(before, events) == ["ff:i-1/a/5"]


def test_a_rewind_keeps_the_run_of_a_failed_step_on_another_branch() -> None:
    definition = bare(svc("a"), svc("b", depends_on=["a"]), svc("side"))
    _, state = start(definition)
    _, state = step(state, CompleteStep(step="a", attempt=1), definition)
    _, state = step(state, FailStep(step="side", attempt=1, error=StepError(message="x", retryable=False)),
                    definition)
    _, state = step(state, FailStep(step="b", attempt=1, error=StepError(message="x", retryable=False)), definition)
    events, state = step(state, RetryWorkflow(from_step="b"), definition)
    retried = events[0]
    assert retried.rewound == ["b"]  # type: ignore[attr-defined]
    assert {e.step: (e.attempt, e.run) for e in scheduled(events)} == {"b": (2, None), "side": (2, 1)}


def test_loop_items_and_validation_rules_get_one_key_each() -> None:
    loop = bare({"name": "each", "type": "loop", "service": "mailer", "items": "{{ input.to }}",
                 "retry_policy": {"max_attempts": 2}})
    events, state = start(loop, {"to": ["a", "b"]})
    keys = _keys(INITIAL, events)
    before = state
    _, state = step(state, FailStep(step="each", attempt=1, error=BOOM, iteration=0), loop)
    events, state = step(state, FireTimer(kind="retry", step="each", attempt=1), loop, T0 + 10_000)
    keys += _keys(before, events)
    before = state
    events, state = step(state, CompleteStep(step="each", attempt=2, iteration=0), loop)
    keys += _keys(before, events)
    assert keys == ["ff:i-1/each/1/0", "ff:i-1/each/1/0", "ff:i-1/each/1/1"]
    rules = bare({"name": "v", "type": "validation", "validation_rules": [
        {"field": "email", "rule": "unique_email", "service": "users"},
        {"field": "name", "rule": "unique_name", "service": "users"}]})
    assert _keys(INITIAL, start(rules)[0]) == ["ff:i-1/v/1/0", "ff:i-1/v/1/1"]


def test_a_notification_task_has_a_key_of_its_own() -> None:
    definition = bare(svc("a", on_failure={"action": "notify", "target": "ops", "endpoint": "/alerts"}))
    _, state = start(definition)
    events, _ = step(state, FailStep(step="a", attempt=1, error=StepError(message="x", retryable=False)), definition)
    (task,) = tasks(state, events)
    assert (task["kind"], task["idempotency_key"], task.get("http")) == ("notification", "ff:i-1/a/1/notify", None)


def test_the_traceparent_is_stored_at_creation_and_carried_by_every_task() -> None:
    definition = bare(svc("a"), svc("b", depends_on=["a"]))
    events, state = start(definition, traceparent=TRACE)
    assert isinstance(events[0], WorkflowCreated) and events[0].traceparent == TRACE
    assert state.traceparent == TRACE
    assert [t["traceparent"] for t in tasks(INITIAL, events)] == [TRACE]
    events, _ = step(state, CompleteStep(step="a", attempt=1), definition)
    assert [t["traceparent"] for t in tasks(state, events)] == [TRACE]


def test_decode_task_entry_gives_the_executor_its_fields() -> None:
    definition = bare(svc("a", headers={"X-A": "{{ input.a }}"}, url="https://x.example"))
    events, _ = start(definition, {"a": 1}, traceparent=TRACE)
    ((queue, task_id, name, attempt, data),) = plan(INITIAL, events, KEYS, 0).tasks
    fields = {b"task_id": task_id.encode(), b"id": IID.encode(), b"step": name.encode(),
              b"attempt": str(attempt).encode(), b"reply_to": b"{ff:0}:inbox", b"data": data}
    task = decode_task_entry("1-0", queue, fields)
    assert (task.idempotency_key, task.traceparent) == ("ff:i-1/a/1", TRACE)
    assert task.http == {"url": "https://x.example", "headers": {"X-A": "1"}}


@pytest.mark.parametrize("bad", ["00-abc-def-01", "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                                 "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                                 "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"])
def test_a_start_with_an_invalid_traceparent_is_dead_lettered_naming_it(bad: str) -> None:
    fields = {b"type": b"start", b"id": IID.encode(),
              b"data": orjson.dumps({"workflow": "t", "traceparent": bad})}
    with pytest.raises(PoisonMessage, match="invalid traceparent"):
        decode_command_entry("1-0", fields, 1 << 20)


# ---------------------------------------------------------------------------
# 5. Call meta
# ---------------------------------------------------------------------------
CALL = {"method": "POST", "url": "https://svc.example/tasks/t-1", "status": 503, "duration_ms": 12,
        "headers": {"Retry-After": "1"}, "body": "x" * 5000, "extra": "dropped"}


def test_call_meta_rides_on_the_result_events_bounded() -> None:
    _, state = start(RETRYING)
    events, state = step(state, FailStep(step="a", attempt=1, error=BOOM, call=CALL), RETRYING)
    (failed,) = events
    assert isinstance(failed, StepFailed) and failed.call is not None
    assert failed.call["body"] == "x" * 2048 and "extra" not in failed.call
    assert failed.call["status"] == 503
    _, state = step(state, FireTimer(kind="retry", step="a", attempt=1), RETRYING, T0 + 10_000)
    ok = {"method": "POST", "status": 200, "duration_ms": 3, "headers": {f"h{i}": "v" * 500 for i in range(40)}}
    events, _ = step(state, CompleteStep(step="a", attempt=2, output={"id": 1}, call=ok), RETRYING)
    completed = next(e for e in events if isinstance(e, StepCompleted))
    assert completed.call is not None and len(orjson.dumps(completed.call)) <= 8192
    assert completed.call["status"] == 200 and 0 < len(completed.call["headers"]) < 40


def test_a_malformed_call_meta_never_loses_the_result() -> None:
    _, state = start(RETRYING)
    events, _ = step(state, CompleteStep(step="a", attempt=1, output=1, call="not an object"), RETRYING)
    assert isinstance(events[0], StepCompleted) and events[0].call is None
    fields = {b"type": b"step.completed", b"id": IID.encode(),
              b"data": orjson.dumps({"step": "a", "attempt": 1, "call": {"status": "teapot"}})}
    command = decode_command_entry("1-0", fields, 1 << 20).command
    assert isinstance(command, CompleteStep)
    assert decide(state, Envelope(instance_id=IID, entry_id="9-0", command=command), RETRYING, T0)[0] == \
        StepCompleted(step="a", attempt=1)


def test_call_meta_reaches_the_steps_read_model_per_attempt() -> None:
    history: list[Event] = []
    _, state = start(RETRYING)
    for command, now in ((FailStep(step="a", attempt=1, error=BOOM, call=CALL), T0 + 1),
                         (FireTimer(kind="retry", step="a", attempt=1), T0 + 20),
                         (CompleteStep(step="a", attempt=2, output={"ok": True},
                                       call={"method": "POST", "status": 201, "duration_ms": 4}), T0 + 30)):
        events, state = step(state, command, RETRYING, now)
        history += events
    first, _ = start(RETRYING)
    doc: Any = None
    for version, event in enumerate(first + history, 1):
        doc = fold_steps(doc, IID, Applied(version, T0 + version, event))
    a = [r for r in doc if r["step"] == "a"]
    assert [(r["attempt"], r["status"], (r.get("call") or {}).get("status")) for r in a] == [
        (1, "failed", 503), (2, "completed", 201)]
    assert a[0]["call"]["body"] == "x" * 2048
    assert fold(INITIAL, first + history, T0).step("a").status == "completed"


@pytest.mark.parametrize(("retry_after_ms", "expected_delay"), [(None, 50), (5_000, 5_000), (10, 50),
                                                                 (10**12, 86_400_000)])
def test_retry_after_is_the_floor_of_the_next_backoff(retry_after_ms: int | None, expected_delay: int) -> None:
    definition = bare(svc("a", retry_policy={"max_attempts": 3, "backoff_base": 1, "backoff_multiplier": 50}))
    _, state = start(definition)
    error = StepError(message="HTTP 503", status=503, retry_after_ms=retry_after_ms)
    events, _ = step(state, FailStep(step="a", attempt=1, error=error), definition, now=T0 + 1)
    failed = [e for e in events if isinstance(e, StepFailed)]
    assert failed[0].retry_at == T0 + 1 + expected_delay and failed[0].error.status == 503
