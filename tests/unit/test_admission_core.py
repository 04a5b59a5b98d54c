"""Admission control in the pure core: the concurrency block of a definition, its key
rendering, and decide/evolve for queued starts, admits, cancel_newest and refused retries.
No Redis: the admission outcome arrives on the command as data."""

from __future__ import annotations

from typing import Any

import pytest

from engine.core.decide import decide, decide_and_fold
from engine.core.definition import DefinitionError, Problem, parse_definition
from engine.core.definition.concurrency import KeyRenderError, render_key
from engine.core.evolve import fold
from engine.core.model import (
    INITIAL,
    STATUS_CANCELLED,
    STATUS_QUEUED,
    STATUS_RUNNING,
    Admission,
    AdmitWorkflow,
    AnyCommand,
    CancelWorkflow,
    CommandRejected,
    Envelope,
    PauseWorkflow,
    RetryWorkflow,
    StartWorkflow,
    State,
    StepError,
    StepScheduled,
    WorkflowCancelled,
    WorkflowCreated,
    WorkflowFailed,
    WorkflowQueued,
    WorkflowStarted,
    decode_command,
    encode,
)

IID = "i-1"
T0 = 1_700_000_000_000


def doc(concurrency: Any) -> dict[str, Any]:
    return {"name": "wf", "version": "1", "definition": {
        "steps": [{"name": "a", "type": "service_call", "service": "svc"}], "concurrency": concurrency}}


DEF = parse_definition(doc({"key": "{{ input.user_id }}", "limit": 1, "on_limit": "queue"}))


def env(cmd: AnyCommand, cmd_id: str | None = None) -> Envelope:
    return Envelope(instance_id=IID, entry_id="1-0", command=cmd, cmd_id=cmd_id)


def start(**admission: Any) -> StartWorkflow:
    adm = Admission(**admission) if admission else None
    return StartWorkflow(workflow="wf", context={"user_id": "u1"}, priority=7, tenant="acme", admission=adm)


def run(state: State, cmd: AnyCommand) -> tuple[list[Any], State]:
    return decide_and_fold(state, env(cmd), DEF, T0)


# -- the definition -------------------------------------------------------------------

def test_concurrency_is_read_from_the_json_and_yaml_forms() -> None:
    yaml_doc = {"apiVersion": "workflow/v1", "kind": "Workflow", "metadata": {"name": "wf", "version": "1"},
                "spec": {"steps": [{"name": "a", "type": "service_call", "service": "svc"}],
                         "concurrency": {"key": "{{ tenant }}", "limit": 4, "on_limit": "cancel_oldest"}}}
    yd = parse_definition(yaml_doc)
    assert yd.concurrency is not None and (yd.concurrency.limit, yd.concurrency.on_limit) == (4, "cancel_oldest")
    assert DEF.concurrency is not None and (DEF.concurrency.limit, DEF.concurrency.on_limit) == (1, "queue")
    defaults = parse_definition(doc({"key": "{{ correlation_id }}"})).concurrency
    assert defaults is not None and (defaults.limit, defaults.on_limit) == (1, "queue")


@pytest.mark.parametrize(("concurrency", "problem"), [
    ({"limit": 1}, Problem("definition.concurrency.key", "required: a template naming what to limit, e.g. "
                           "'{{ input.user_id }}' or '{{ tenant }}'")),
    ({"key": "{{ tenant }}", "limit": 0}, Problem("definition.concurrency.limit", "must be an integer >= 1, got 0")),
    ({"key": "{{ tenant }}", "limit": "2"}, Problem("definition.concurrency.limit", "must be an integer >= 1, got '2'")),
    ({"key": "{{ tenant }}", "on_limit": "drop"},
     Problem("definition.concurrency.on_limit", "must be one of queue, cancel_newest, cancel_oldest, got 'drop'")),
    ({"key": "{{ steps.a.output }}"},
     Problem("definition.concurrency.key", "reads 'steps.a.output': a concurrency key may read only input, tenant "
             "and correlation_id")),
    ({"key": "{{ input.x "}, None),
    ("x", Problem("definition.concurrency", "must be an object, got a string")),
])
def test_each_problem_of_a_concurrency_block_is_named(concurrency: Any, problem: Problem | None) -> None:
    with pytest.raises(DefinitionError) as caught:
        parse_definition(doc(concurrency))
    if problem is None:  # a broken template: the template checker's own message, at the key
        assert [p.path for p in caught.value.problems] == ["definition.concurrency.key"]
    else:
        assert caught.value.problems == [problem]


def test_the_key_renders_from_input_tenant_and_correlation_id() -> None:
    conc = parse_definition(doc({"key": "{{ tenant }}/{{ input.user_id }}/{{ correlation_id }}"})).concurrency
    assert conc is not None
    assert render_key(conc, {"user_id": 42}, "acme", "c-1") == "acme/42/c-1"
    assert DEF.concurrency is not None and render_key(DEF.concurrency, {"user_id": 42}, None, None) == "42"
    with pytest.raises(KeyRenderError, match="cannot be rendered"):
        render_key(DEF.concurrency, {}, None, None)


# -- decide / evolve -----------------------------------------------------------------

def test_a_start_without_admission_runs_as_before() -> None:
    # given no admission outcome (the in-memory engine, or a definition without concurrency)
    events, state = run(INITIAL, StartWorkflow(workflow="wf", context={"user_id": "u1"}))
    assert [type(e) for e in events] == [WorkflowCreated, WorkflowStarted, StepScheduled]
    assert state.status == STATUS_RUNNING and state.concurrency_key is None


def test_an_admitted_start_records_key_priority_and_tenant() -> None:
    events, state = run(INITIAL, start(outcome="run", key="u1", limit=1))
    assert [type(e) for e in events] == [WorkflowCreated, WorkflowStarted, StepScheduled]
    created = events[0]
    assert (created.priority, created.tenant, created.concurrency_key) == (7, "acme", "u1")
    assert (state.priority, state.tenant, state.concurrency_key) == (7, "acme", "u1")


def test_a_queued_start_is_created_queued_with_no_tasks() -> None:
    events, state = run(INITIAL, start(outcome="queue", key="u1", limit=1))
    assert [type(e) for e in events] == [WorkflowCreated, WorkflowQueued]
    assert events[1] == WorkflowQueued(key="u1", limit=1, priority=7)
    assert state.status == STATUS_QUEUED and state.steps == {}


def test_admit_starts_a_queued_instance_once() -> None:
    _, queued = run(INITIAL, start(outcome="queue", key="u1", limit=1))
    events, state = run(queued, AdmitWorkflow(key="u1"))
    assert [type(e) for e in events] == [WorkflowStarted, StepScheduled] and state.status == STATUS_RUNNING
    assert run(state, AdmitWorkflow(key="u1"))[0] == []  # a repeat changes nothing


def test_a_queued_instance_can_be_cancelled_and_a_late_admit_is_ignored() -> None:
    _, queued = run(INITIAL, start(outcome="queue", key="u1", limit=1))
    events, cancelled = run(queued, CancelWorkflow(reason="no longer needed"))
    assert events == [WorkflowCancelled(reason="no longer needed")] and cancelled.status == STATUS_CANCELLED
    assert run(cancelled, AdmitWorkflow(key="u1"))[0] == []
    assert [type(e) for e in run(queued, PauseWorkflow())[0]] == [CommandRejected]  # only a running one pauses


def test_cancel_newest_creates_the_instance_cancelled_with_the_reason() -> None:
    why = "cancelled at start: the concurrency limit of 'wf' is reached (limit 1 for key 'u1', on_limit cancel_newest)"
    events, state = run(INITIAL, start(outcome="cancel", key="u1", limit=1, reason=why))
    assert [type(e) for e in events] == [WorkflowCreated, WorkflowCancelled]
    assert events[1].reason == why and state.status == STATUS_CANCELLED


def test_a_retry_without_a_free_slot_is_refused_with_the_reason() -> None:
    _, running = run(INITIAL, start(outcome="run", key="u1", limit=1))
    failed = fold(running, [WorkflowFailed(step="a", error=StepError(message="boom", retryable=False))], T0)
    refused = Admission(outcome="refuse", key="u1", limit=1, reason="cannot retry: the concurrency limit ...")
    events = decide(failed, env(RetryWorkflow(admission=refused)), DEF, T0)
    assert events == [CommandRejected(command="retry", reason="cannot retry: the concurrency limit ...",
                                      command_id="1-0")]
    allowed = decide(failed, env(RetryWorkflow(admission=Admission(outcome="run", key="u1", limit=1))), DEF, T0)
    assert "workflow.retried" in [type(e).__struct_config__.tag for e in allowed]


def test_the_new_command_and_fields_survive_the_wire() -> None:
    cmd = start(outcome="queue", key="u1", limit=3)
    assert decode_command("start", encode(cmd)) == cmd
    assert decode_command("admit", b'{"key": "u1"}') == AdmitWorkflow(key="u1")
    assert decode_command("start", b'{"workflow": "wf"}') == StartWorkflow(workflow="wf")  # old entries decode


def test_the_in_memory_engine_runs_a_concurrency_definition_without_contention() -> None:
    from engine.core.simulate import run_test

    result = run_test(DEF, None, context={"user_id": "u1"})
    assert result["status"] == "completed"
    assert [h["type"] for h in result["history"]][:2] == ["workflow.created", "workflow.started"]
