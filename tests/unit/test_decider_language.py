"""The workflow language in the pure core, given/when/then.

Each test states a history (or runs one through the decider), sends one
command and lists every event it expects: conditionals and skips, ``condition:``
on any step, loops, validation steps, delays, sub-workflows (with the outbox
commands ``effects.plan`` derives), saga compensation, ``on_timeout``, retry
jitter, signals, ``retry --from-step``, ``spec.output``, the workflow deadline
and step output mapping. No Redis, no fixtures.
"""

from __future__ import annotations

import itertools
import zlib
from typing import Any

import orjson

from engine.core.decide import decide, decide_and_fold
from engine.core.definition import Definition, parse_definition
from engine.core.evolve import fold
from engine.core.ids import partition_of
from engine.core.model import (
    INITIAL,
    AnyCommand,
    CancelWorkflow,
    ChildStarted,
    CommandRejected,
    CompensationStarted,
    CompleteStep,
    DeliverEvent,
    Envelope,
    Event,
    FailStep,
    FireTimer,
    NotificationScheduled,
    ParentRef,
    PauseWorkflow,
    ResumeWorkflow,
    RetryWorkflow,
    SignalReceived,
    SignalWorkflow,
    StartWorkflow,
    State,
    StepCompleted,
    StepDelayed,
    StepError,
    StepFailed,
    StepIterationCompleted,
    StepScheduled,
    StepSkipped,
    StepWaiting,
    WorkflowCancelled,
    WorkflowCompensated,
    WorkflowCompleted,
    WorkflowCreated,
    WorkflowFailed,
    WorkflowRetried,
    WorkflowStarted,
    decode_command,
)
from engine.core.steps import child_id_for
from engine.store.keys import Keys
from engine.store.plan import plan, timer_member, wait_member

IID = "i-1"
T0 = 1_700_000_000_000
NOW = T0 + 5_000
HOUR = 3_600_000
BOOM = StepError(message="boom")
FATAL = StepError(message="bad request", retryable=False)
KEYS = Keys(prefix="ff", partitions=8)

_entry_ids = itertools.count(1)


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------
def env(command: AnyCommand, cmd_id: str | None = None, instance_id: str = IID) -> Envelope:
    return Envelope(instance_id=instance_id, entry_id=f"{next(_entry_ids)}-0", command=command, cmd_id=cmd_id)


def given(*history: Event | list[Event]) -> State:
    events: list[Event] = []
    for item in history:
        events.extend(item if isinstance(item, list) else [item])
    return fold(INITIAL, events, T0)


def when(state: State, command: AnyCommand, definition: Definition, now: int = NOW,
         cmd_id: str | None = None) -> list[Event]:
    return decide(state, env(command, cmd_id, state.id or IID), definition, now)


def run(definition: Definition, *commands: AnyCommand | tuple[AnyCommand, int], context: dict[str, Any] | None = None,
        now: int = T0, instance_id: str = IID, correlation_id: str | None = None,
        parent: ParentRef | None = None) -> State:
    """A history made by the decider itself; a (command, ms) pair runs that command at that time."""
    state = INITIAL
    start = StartWorkflow(workflow=definition.name, context=context or {}, correlation_id=correlation_id,
                          parent=parent)
    for item in (start, *commands):
        command, at = item if isinstance(item, tuple) else (item, now)
        _, state = decide_and_fold(state, env(command, instance_id=instance_id), definition, at)
    return state


def bare(*steps: dict[str, Any], **extra: Any) -> Definition:
    return parse_definition({"steps": list(steps), **extra}, name="t", version="1")


def svc(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "type": "service_call", "service": "svc", **fields}


def started(definition: Definition, context: dict[str, Any] | None = None) -> list[Event]:
    return [WorkflowCreated(instance_id=IID, workflow=definition.name, version=definition.version,
                            context=context or {}),
            WorkflowStarted(timeout_at=T0 + definition.timeout_ms if definition.timeout_ms else None)]


def tid(step: str, attempt: int, part: int | None = None) -> str:
    return f"{IID}:{step}:{attempt}" + ("" if part is None else f":{part}")


def call(step: str, attempt: int = 1, *, queue: str = "svc", endpoint: str | None = None, input: Any = None,
         iteration: int | None = None, items: list[Any] | None = None, timeout_at: int | None = None,
         run: int = 1) -> StepScheduled:
    """``run``: the attempt this run of the step began at (the event leaves it out when that is this one)."""
    return StepScheduled(step=step, attempt=attempt, task_id=tid(step, attempt, iteration), queue=queue,
                         endpoint=endpoint, input={} if input is None else input, iteration=iteration, items=items,
                         timeout_at=timeout_at, run=None if run == attempt else run)


def done(step: str, attempt: int = 1, output: Any = None) -> StepCompleted:
    return StepCompleted(step=step, attempt=attempt, output=output)


def complete(step: str, attempt: int = 1, output: Any = None, iteration: int | None = None,
             task_id: str | None = None) -> CompleteStep:
    return CompleteStep(step=step, attempt=attempt, output=output, iteration=iteration,
                        task_id=task_id or tid(step, attempt, iteration))


def fail(step: str, attempt: int = 1, error: StepError = BOOM, iteration: int | None = None) -> FailStep:
    return FailStep(step=step, attempt=attempt, error=error, iteration=iteration,
                    task_id=tid(step, attempt, iteration))


def timer(kind: str, step: str, attempt: int) -> FireTimer:
    return FireTimer(kind=kind, step=step, attempt=attempt)


def decoded(fields: dict[str, bytes | str]) -> AnyCommand:
    """An outbox entry read back as the command its target inbox will decode."""
    data = fields["data"]
    command = decode_command(str(fields["type"]), data if isinstance(data, bytes) else data.encode())
    assert isinstance(command, (StartWorkflow, CompleteStep, FailStep))
    return command


def rejected(command: str, reason: str, state: State, cmd: AnyCommand, definition: Definition) -> bool:
    envelope = env(cmd)
    return decide(state, envelope, definition, NOW) == [
        CommandRejected(command=command, reason=reason, command_id=envelope.entry_id)]


# ---------------------------------------------------------------------------
# conditional steps and skips
# ---------------------------------------------------------------------------
COND = bare(
    svc("check"),
    {"name": "branch", "type": "conditional", "depends_on": ["check"], "condition": "steps.check.output.score >= 10",
     "true_edge": "high", "false_edge": "low"},
    svc("high"),
    svc("low"),
    svc("after_low", depends_on=["low"]),
    svc("join", depends_on=["high", "low"]),
)
COND_RUNNING = [*started(COND), call("check")]
TOOK_TRUE = "conditional 'branch' took the true edge to 'high'"
TOOK_FALSE = "conditional 'branch' took the false edge to 'low'"
ALL_SKIPPED = "every step it depends on was skipped"


def test_a_conditional_edge_runs_after_the_conditional() -> None:
    assert COND.step("high").depends_on == ("branch",) and COND.step("low").depends_on == ("branch",)


def test_a_true_condition_takes_the_true_edge_and_skips_the_false_edge_and_what_only_follows_it() -> None:
    assert when(given(COND_RUNNING), complete("check", output={"score": 12}), COND) == [
        done("check", output={"score": 12}),
        StepCompleted(step="branch", attempt=1, output={"result": True, "edge": "high"}),
        StepSkipped(step="low", attempt=0, reason=TOOK_TRUE),
        call("high"),
        StepSkipped(step="after_low", attempt=0, reason=ALL_SKIPPED),
    ]


def test_a_false_condition_takes_the_false_edge_and_skips_the_true_edge() -> None:
    assert when(given(COND_RUNNING), complete("check", output={"score": 3}), COND) == [
        done("check", output={"score": 3}),
        StepCompleted(step="branch", attempt=1, output={"result": False, "edge": "low"}),
        StepSkipped(step="high", attempt=0, reason=TOOK_FALSE),
        call("low"),
    ]


def test_a_join_with_one_skipped_and_one_completed_dependency_runs() -> None:
    state = run(COND, complete("check", output={"score": 3}))
    assert when(state, complete("low", output="L"), COND) == [done("low", output="L"), call("after_low"),
                                                              call("join")]


def test_a_workflow_with_skipped_sinks_completes_with_null_for_them() -> None:
    state = run(COND, complete("check", output={"score": 12}), complete("high"))
    assert state.step("after_low").status == "skipped"
    assert when(state, complete("join", output=1), COND) == [
        done("join", output=1), WorkflowCompleted(output={"after_low": None, "join": 1}),
    ]


def test_a_conditional_keeps_counting_attempts_when_it_runs_again() -> None:
    definition = bare(svc("a"), {"name": "branch", "type": "conditional", "depends_on": ["a"], "condition": "true",
                                 "true_edge": "x"}, svc("x"))
    state = run(definition, complete("a"), fail("x", error=FATAL))
    assert state.step("branch").attempt == 1  # it completed at attempt 1
    events = when(state, RetryWorkflow(from_step="branch"), definition)
    assert events[:2] == [WorkflowRetried(steps=["branch", "x"], from_step="branch"),
                          StepCompleted(step="branch", attempt=2, output={"result": True, "edge": "x"})]


def test_a_skipped_conditional_skips_both_edges() -> None:
    definition = bare(
        svc("a", condition="input.go"),
        {"name": "c", "type": "conditional", "depends_on": ["a"], "condition": "true", "true_edge": "x",
         "false_edge": "y"},
        svc("x"), svc("y"),
    )
    events = when(INITIAL, StartWorkflow(workflow="t", context={"go": False}), definition)
    assert events == [
        *started(definition, {"go": False}),
        StepSkipped(step="a", attempt=0, reason="condition 'input.go' is false"),
        StepSkipped(step="c", attempt=0, reason=ALL_SKIPPED),
        StepSkipped(step="x", attempt=0, reason=ALL_SKIPPED),
        StepSkipped(step="y", attempt=0, reason=ALL_SKIPPED),
        WorkflowCompleted(output={"x": None, "y": None}),
    ]


def test_a_false_condition_on_a_normal_step_skips_it_with_the_reason() -> None:
    definition = bare(svc("a"), svc("vip", depends_on=["a"], condition="{{ input.tier == 'gold' }}"),
                      svc("after", depends_on=["vip"]), svc("other", depends_on=["a"]))
    state = given(started(definition, {"tier": "silver"}), call("a"))
    assert when(state, complete("a"), definition) == [
        done("a"),
        StepSkipped(step="vip", attempt=0, reason="condition \"{{ input.tier == 'gold' }}\" is false"),
        StepSkipped(step="after", attempt=0, reason=ALL_SKIPPED),
        call("other"),
    ]


def test_a_true_condition_on_a_normal_step_dispatches_it() -> None:
    definition = bare(svc("a"), svc("vip", depends_on=["a"], condition="input.tier == 'gold'"))
    state = given(started(definition, {"tier": "gold"}), call("a"))
    assert when(state, complete("a"), definition) == [done("a"), call("vip")]


def test_a_condition_can_read_a_step_output() -> None:
    definition = bare(svc("a"), svc("b", depends_on=["a"], condition="len(steps.a.output.items) > 1"))
    state = given(started(definition), call("a"))
    assert when(state, complete("a", output={"items": [1]}), definition) == [
        done("a", output={"items": [1]}),
        StepSkipped(step="b", attempt=0, reason="condition 'len(steps.a.output.items) > 1' is false"),
        WorkflowCompleted(output={"b": None}),
    ]


# ---------------------------------------------------------------------------
# loops
# ---------------------------------------------------------------------------
USERS = [{"id": "u1", "email": "a@x"}, {"id": "u2", "email": "b@x"}]
LOOP = bare(
    {"name": "each", "type": "loop", "service": "mailer", "items": "{{ input.users }}", "max_iterations": 3,
     "endpoint": "/send/{{ item.id }}", "input": {"to": "{{ item.email }}", "n": "{{ index }}"},
     "retry_policy": {"max_attempts": 2, "backoff_multiplier": 1000}},
    svc("after", depends_on=["each"], input={"sent": "{{ steps.each.output.items }}"}),
)


LOOP_DOC = {"name": "each", "type": "loop", "service": "mailer", "items": "{{ input.users }}"}


def item(index: int, attempt: int, first: bool = False, users: list[dict[str, str]] = USERS) -> StepScheduled:
    user = users[index]
    return call("each", attempt, queue="mailer", endpoint=f"/send/{user['id']}",
                input={"to": user["email"], "n": index}, iteration=index, items=users if first else None)


def test_a_loop_schedules_its_first_item_with_the_rendered_items() -> None:
    assert when(INITIAL, StartWorkflow(workflow="t", context={"users": USERS}), LOOP) == [
        *started(LOOP, {"users": USERS}), item(0, 1, first=True),
    ]


def test_a_completed_item_schedules_the_next_one_as_a_new_attempt() -> None:
    state = run(LOOP, context={"users": USERS})
    assert when(state, complete("each", 1, {"ok": 0}, iteration=0), LOOP) == [
        StepIterationCompleted(step="each", attempt=1, iteration=0, output={"ok": 0}), item(1, 2),
    ]


def test_the_last_item_completes_the_loop_with_every_result_in_order() -> None:
    state = run(LOOP, complete("each", 1, "r0", iteration=0), context={"users": USERS})
    assert when(state, complete("each", 2, "r1", iteration=1), LOOP) == [
        StepIterationCompleted(step="each", attempt=2, iteration=1, output="r1"),
        done("each", 2, {"items": ["r0", "r1"]}),
        call("after", input={"sent": ["r0", "r1"]}),
    ]


def test_a_loop_over_a_step_output_sends_the_item_and_index_by_default() -> None:
    definition = bare(svc("list"), {"name": "each", "type": "loop", "service": "q", "depends_on": ["list"],
                                    "items": "{{ steps.list.output.ids }}"})
    state = given(started(definition), call("list"))
    assert when(state, complete("list", output={"ids": [7, 8]}), definition) == [
        done("list", output={"ids": [7, 8]}),
        StepScheduled(step="each", attempt=1, task_id=tid("each", 1, 0), queue="q", input={"item": 7, "index": 0},
                      iteration=0, items=[7, 8]),
    ]


def test_a_failed_item_retries_only_that_item() -> None:
    state = run(LOOP, complete("each", 1, "r0", iteration=0), context={"users": USERS})
    assert when(state, fail("each", 2, iteration=1), LOOP) == [
        StepFailed(step="each", attempt=2, error=BOOM, iteration=1, retry_at=NOW + 1000),
    ]
    state = run(LOOP, complete("each", 1, "r0", iteration=0), fail("each", 2, iteration=1),
                context={"users": USERS})
    assert when(state, timer("retry", "each", 2), LOOP) == [item(1, 3)]


def test_each_item_gets_a_fresh_attempt_budget() -> None:
    # max_attempts 2: item 0 uses both attempts, item 1 still gets two of its own.
    state = run(LOOP, fail("each", 1, iteration=0), timer("retry", "each", 1), complete("each", 2, "r0", iteration=0),
                fail("each", 3, iteration=1), context={"users": USERS})
    assert state.step("each").status == "retrying"
    assert when(state, timer("retry", "each", 3), LOOP) == [item(1, 4)]
    state = run(LOOP, fail("each", 1, iteration=0), timer("retry", "each", 1), complete("each", 2, "r0", iteration=0),
                fail("each", 3, iteration=1), timer("retry", "each", 3), context={"users": USERS})
    assert when(state, fail("each", 4, iteration=1), LOOP) == [
        StepFailed(step="each", attempt=4, error=BOOM, iteration=1), WorkflowFailed(step="each", error=BOOM),
    ]


def test_a_result_for_another_item_or_without_an_item_is_stale() -> None:
    state = run(LOOP, context={"users": USERS})
    assert when(state, complete("each", 1, "x", iteration=1), LOOP) == []
    assert when(state, CompleteStep(step="each", attempt=1, output="x"), LOOP) == []
    assert when(state, FailStep(step="each", attempt=1, error=BOOM), LOOP) == []
    state = run(LOOP, complete("each", 1, "r0", iteration=0), context={"users": USERS})
    assert when(state, complete("each", 1, "again", iteration=0), LOOP) == []


def test_an_empty_list_completes_the_loop_at_once() -> None:
    assert when(INITIAL, StartWorkflow(workflow="t", context={"users": []}), LOOP) == [
        *started(LOOP, {"users": []}), done("each", 1, {"items": []}), call("after", input={"sent": []}),
    ]


def test_more_items_than_max_iterations_fails_the_step_for_good() -> None:
    users = USERS * 2
    error = StepError(message="cannot render step 'each': 4 items, more than max_iterations 3", retryable=False,
                      kind="template")
    assert when(INITIAL, StartWorkflow(workflow="t", context={"users": users}), LOOP) == [
        *started(LOOP, {"users": users}), StepFailed(step="each", attempt=1, error=error),
        WorkflowFailed(step="each", error=error),
    ]


def test_items_that_are_not_a_list_fail_with_a_template_error() -> None:
    error = StepError(message="cannot render step 'each': items must be a list, got str", retryable=False,
                      kind="template")
    assert when(INITIAL, StartWorkflow(workflow="t", context={"users": "ada"}), LOOP) == [
        *started(LOOP, {"users": "ada"}), StepFailed(step="each", attempt=1, error=error),
        WorkflowFailed(step="each", error=error),
    ]


def test_a_loop_item_completed_while_paused_dispatches_nothing_until_resume() -> None:
    state = run(LOOP, PauseWorkflow(), context={"users": USERS})
    assert when(state, complete("each", 1, "r0", iteration=0), LOOP) == [
        StepIterationCompleted(step="each", attempt=1, iteration=0, output="r0"),
    ]


def test_an_item_whose_payload_cannot_render_fails_the_loop_instead_of_raising() -> None:
    users = [{"id": "u1", "email": "a@x"}, {"id": "u2"}]  # the second user has no email for the payload
    state = run(LOOP, context={"users": users})
    events = when(state, complete("each", 1, "r0", iteration=0), LOOP)  # raised MissingValue out of decide
    error = StepError(message="cannot render step 'each': item.email is not set", retryable=False, kind="template")
    assert events[0] == StepIterationCompleted(step="each", attempt=1, iteration=0, output="r0")
    assert [(type(e), e.step, e.attempt, e.error) for e in events[1:2] if isinstance(e, StepFailed)] == [
        (StepFailed, "each", 2, error)]
    assert events[-1] == WorkflowFailed(step="each", error=error)


def test_resume_after_a_paused_loop_item_carries_the_loop_on() -> None:
    state = run(LOOP, PauseWorkflow(), complete("each", 1, "r0", iteration=0), ResumeWorkflow(),
                context={"users": USERS})
    each = state.step("each")
    assert (each.status, each.iteration, each.results) == ("scheduled", 1, ["r0"])


def test_a_loop_item_completed_after_the_workflow_failed_dispatches_nothing() -> None:
    definition = bare(LOOP_DOC, svc("other", retry_policy={"max_attempts": 1}))
    state = run(definition, fail("other", error=FATAL), context={"users": USERS})
    assert state.status == "failed"
    assert when(state, complete("each", 1, "r0", iteration=0), definition) == [
        StepIterationCompleted(step="each", attempt=1, iteration=0, output="r0"),
    ]


def test_a_timeout_for_a_loop_item_that_already_came_back_is_ignored() -> None:
    """The item's result beat its timeout into the inbox while the instance was paused (or
    after it failed): the next item is not out yet, so the step still shows that attempt
    as scheduled. The timeout is stale (hypothesis found it raising out of decide)."""
    timed = bare({**LOOP_DOC, "timeout": 1000, "retry_policy": {"max_attempts": 1}},
                 svc("other", retry_policy={"max_attempts": 1}))
    for last in (PauseWorkflow(), fail("other", error=FATAL)):
        state = run(timed, last, complete("each", 1, "r0", iteration=0), context={"users": USERS})
        assert state.step("each").status == "scheduled" and state.step("each").done == [0]
        assert when(state, timer("timeout", "each", 1), timed) == []


def test_plan_sends_each_item_as_a_task_naming_its_iteration() -> None:
    state = run(LOOP, context={"users": USERS})
    events = when(state, complete("each", 1, "r0", iteration=0), LOOP)
    [(key, task_id, step, attempt, data)] = plan(state, events, KEYS, 3).tasks
    assert (key, task_id, step, attempt) == ("{ff:3}:tasks:mailer", tid("each", 2, 1), "each", 2)
    assert orjson.loads(data)["iteration"] == 1 and orjson.loads(data)["input"] == {"to": "b@x", "n": 1}


# ---------------------------------------------------------------------------
# validation steps
# ---------------------------------------------------------------------------
VALID = bare(
    {"name": "validate", "type": "validation", "retry_policy": {"max_attempts": 2, "backoff_multiplier": 1000},
     "validation_rules": [
         {"field": "email", "rule": "unique_email", "service": "user-service"},
         {"field": "username", "rule": "unique_username", "service": "user-service",
          "endpoint": "/check/{{ input.username }}"},
     ]},
    svc("next", depends_on=["validate"]),
)
ADA = {"email": "ada@x", "username": "ada"}


def part(index: int, attempt: int = 1) -> StepScheduled:
    field, rule, endpoint = [("email", "unique_email", "/validate"),
                             ("username", "unique_username", "/check/ada")][index]
    return call("validate", attempt, queue="user-service", endpoint=endpoint, iteration=index,
                input={"field": field, "rule": rule, "value": ADA[field]})


def test_a_validation_step_sends_one_task_per_rule() -> None:
    assert when(INITIAL, StartWorkflow(workflow="t", context=ADA), VALID) == [*started(VALID, ADA), part(0), part(1)]


def test_every_rule_valid_completes_the_step_with_each_rules_result() -> None:
    state = run(VALID, complete("validate", 1, {"valid": True, "n": 1}, iteration=1), context=ADA)
    assert when(state, complete("validate", 1, {"valid": True, "n": 0}, iteration=0), VALID) == [
        StepIterationCompleted(step="validate", attempt=1, iteration=0, output={"valid": True, "n": 0}),
        done("validate", 1, {"valid": True, "rules": {"unique_email": {"valid": True, "n": 0},
                                                      "unique_username": {"valid": True, "n": 1}}}),
        call("next"),
    ]


def test_one_rule_answered_is_not_enough() -> None:
    state = run(VALID, context=ADA)
    assert when(state, complete("validate", 1, {"valid": True}, iteration=1), VALID) == [
        StepIterationCompleted(step="validate", attempt=1, iteration=1, output={"valid": True}),
    ]


def test_an_invalid_answer_fails_the_step_for_good_naming_the_rule_and_field() -> None:
    state = run(VALID, context=ADA)
    error = StepError(message="validation rule 'unique_email' on field 'email' failed: taken", retryable=False,
                      kind="validation")
    assert when(state, complete("validate", 1, {"valid": False, "message": "taken"}, iteration=0), VALID) == [
        StepFailed(step="validate", attempt=1, error=error, iteration=0), WorkflowFailed(step="validate", error=error),
    ]


def test_a_retryable_part_failure_retries_every_part_at_the_next_attempt() -> None:
    state = run(VALID, complete("validate", 1, {"valid": True}, iteration=0), context=ADA)
    error = StepError(message="validation rule 'unique_username' on field 'username' failed: boom")
    assert when(state, fail("validate", 1, iteration=1), VALID) == [
        StepFailed(step="validate", attempt=1, error=error, iteration=1, retry_at=NOW + 1000),
    ]
    state = run(VALID, complete("validate", 1, {"valid": True}, iteration=0), fail("validate", 1, iteration=1),
                context=ADA)
    assert when(state, timer("retry", "validate", 1), VALID) == [part(0, 2), part(1, 2)]


def test_a_retried_validation_needs_every_part_again() -> None:
    state = run(VALID, complete("validate", 1, {"valid": True}, iteration=0), fail("validate", 1, iteration=1),
                timer("retry", "validate", 1), context=ADA)
    assert when(state, complete("validate", 2, {"valid": True}, iteration=1), VALID) == [
        StepIterationCompleted(step="validate", attempt=2, iteration=1, output={"valid": True}),
    ]


def test_stale_part_results_are_ignored() -> None:
    answered = run(VALID, complete("validate", 1, {"valid": True}, iteration=0), context=ADA)
    retrying = run(VALID, fail("validate", 1, iteration=1), context=ADA)
    retried = run(VALID, fail("validate", 1, iteration=1), timer("retry", "validate", 1), context=ADA)
    assert when(answered, complete("validate", 1, {"valid": True}, iteration=0), VALID) == []  # a repeat
    assert when(answered, complete("validate", 1, {"valid": True}, iteration=2), VALID) == []  # no such rule
    assert when(answered, CompleteStep(step="validate", attempt=1, output={"valid": True}), VALID) == []
    assert when(retrying, complete("validate", 1, {"valid": True}, iteration=0), VALID) == []
    assert when(retried, complete("validate", 1, {"valid": True}, iteration=0), VALID) == []
    assert when(retried, fail("validate", 1, iteration=0), VALID) == []


def test_a_repeated_part_result_without_output_is_not_counted_twice() -> None:
    # A raw step.completed entry may leave out `output`; its repeat must not stand in for the other rule.
    state = run(VALID, CompleteStep(step="validate", attempt=1, iteration=0), context=ADA)
    assert when(state, CompleteStep(step="validate", attempt=1, iteration=0), VALID) == []


# ---------------------------------------------------------------------------
# delays
# ---------------------------------------------------------------------------
DELAY = bare(svc("a"), {"name": "nap", "type": "delay", "duration": "5s", "depends_on": ["a"]},
             svc("b", depends_on=["nap"]))


def test_a_delay_step_is_delayed_until_its_duration_passed_and_arms_a_timer() -> None:
    state = given(started(DELAY), call("a"))
    events = when(state, complete("a"), DELAY)
    assert events == [done("a"), StepDelayed(step="nap", attempt=1, until=NOW + 5000)]
    assert plan(state, events, KEYS, 3).timers_add == [(NOW + 5000, timer_member(IID, "delay", "nap", 1))]


def test_the_delay_timer_completes_the_step() -> None:
    state = given(started(DELAY), call("a"), done("a"), StepDelayed(step="nap", attempt=1, until=T0 + 5000))
    assert when(state, timer("delay", "nap", 1), DELAY) == [done("nap", 1, {"delayed_ms": 5000}), call("b")]


def test_a_delay_timer_for_another_attempt_or_kind_is_ignored() -> None:
    state = given(started(DELAY), call("a"), done("a"), StepDelayed(step="nap", attempt=1, until=T0 + 5000))
    assert when(state, timer("delay", "nap", 2), DELAY) == []
    assert when(state, timer("delay", "nap", 0), DELAY) == []
    assert when(state, timer("retry", "nap", 1), DELAY) == []
    assert when(given(started(DELAY), call("a")), timer("delay", "a", 1), DELAY) == []


def test_cancel_disarms_a_pending_delay_timer() -> None:
    state = given(started(DELAY), call("a"), done("a"), StepDelayed(step="nap", attempt=1, until=T0 + 5000))
    events = when(state, CancelWorkflow(), DELAY)
    assert events == [WorkflowCancelled()]
    assert plan(state, events, KEYS, 3).timers_rem == [timer_member(IID, "delay", "nap", 1)]


# ---------------------------------------------------------------------------
# sub-workflows
# ---------------------------------------------------------------------------
PARENT = bare(
    svc("a"),
    {"name": "child", "type": "sub_workflow", "workflow": "kid", "workflow_version": "2", "depends_on": ["a"],
     "input": {"user": "{{ input.user }}"}, "output": {"id": "{{ response.k.id }}"}},
    svc("after", depends_on=["child"], input={"id": "{{ steps.child.output.id }}"}),
)
KID = parse_definition({"steps": [svc("k")]}, name="kid", version="2")
CHILD = "i-1.child.1"


def parent_waiting() -> State:
    return run(PARENT, complete("a"), context={"user": "ada"}, correlation_id="c-1")


def test_a_sub_workflow_step_starts_a_child_with_a_deterministic_id() -> None:
    state = run(PARENT, context={"user": "ada"}, correlation_id="c-1")
    assert when(state, complete("a"), PARENT) == [
        done("a"),
        ChildStarted(step="child", attempt=1, child_id=CHILD, workflow="kid", version="2", input={"user": "ada"}),
    ]
    assert child_id_for(IID, "child", 1) == CHILD
    long_id = "x" * 200
    assert child_id_for(long_id, "child", 1) == child_id_for(long_id, "child", 1) != child_id_for(long_id, "child", 2)
    assert child_id_for(long_id, "child", 1).startswith("child-")


def test_a_sub_workflow_without_input_passes_the_parents_context() -> None:
    definition = bare({"name": "child", "type": "sub_workflow", "workflow": "kid"})
    assert when(INITIAL, StartWorkflow(workflow="t", context={"u": 1}), definition)[-1] == ChildStarted(
        step="child", attempt=1, child_id=CHILD, workflow="kid", input={"u": 1})


def test_plan_puts_a_start_command_for_the_child_in_the_outbox() -> None:
    state = run(PARENT, context={"user": "ada"}, correlation_id="c-1")
    events = when(state, complete("a"), PARENT)
    fx = plan(state, events, KEYS, KEYS.partition(IID))
    [(target, fields)] = fx.outbox
    assert target == KEYS.inbox(partition_of(CHILD, KEYS.partitions))
    assert (fields["type"], fields["id"], fields["cmd_id"]) == ("start", CHILD, f"start:{CHILD}")
    assert orjson.loads(fields["data"]) == {"workflow": "kid", "version": "2", "context": {"user": "ada"},
                                            "parent": {"id": IID, "step": "child", "attempt": 1},
                                            "correlation_id": "c-1"}
    command = decoded(fields)
    assert command == StartWorkflow(workflow="kid", version="2", context={"user": "ada"}, correlation_id="c-1",
                                    parent=ParentRef(id=IID, step="child", attempt=1))
    assert fx.tasks == []


def child_running() -> State:
    return run(KID, instance_id=CHILD, correlation_id="c-1", context={"user": "ada"},
               parent=ParentRef(id=IID, step="child", attempt=1))


def test_a_completed_child_tells_its_parent_step_through_the_outbox() -> None:
    state = child_running()
    events, _ = decide_and_fold(state, env(complete("k", output={"id": 7}, task_id=f"{CHILD}:k:1"),
                                           instance_id=CHILD), KID, NOW)
    assert events[-1] == WorkflowCompleted(output={"k": {"id": 7}})
    [(target, fields)] = plan(state, events, KEYS, KEYS.partition(CHILD)).outbox
    assert target == KEYS.inbox(KEYS.partition(IID))
    assert (fields["type"], fields["id"], fields["cmd_id"]) == ("step.completed", IID, f"child:{CHILD}:step.completed")
    assert decoded(fields) == CompleteStep(
        step="child", attempt=1, task_id=CHILD, output={"k": {"id": 7}})


def test_a_failed_child_fails_its_parent_step_through_the_outbox() -> None:
    state = child_running()
    events, _ = decide_and_fold(state, env(FailStep(step="k", attempt=1, error=FATAL), instance_id=CHILD), KID, NOW)
    [(target, fields)] = plan(state, events, KEYS, KEYS.partition(CHILD)).outbox
    assert target == KEYS.inbox(KEYS.partition(IID))
    assert decoded(fields) == FailStep(
        step="child", attempt=1, task_id=CHILD,
        error=StepError(message=f"child workflow {CHILD} failed: bad request", retryable=False, kind="child"))


def test_a_workflow_without_a_parent_tells_nobody() -> None:
    state = run(KID)
    events = when(state, complete("k"), KID)
    assert events[-1] == WorkflowCompleted(output={"k": None})
    assert plan(state, events, KEYS, 0).outbox == []


def test_the_parent_step_completes_with_the_childs_mapped_output() -> None:
    command = CompleteStep(step="child", attempt=1, task_id=CHILD, output={"k": {"id": 7}})
    assert when(parent_waiting(), command, PARENT) == [done("child", 1, {"id": 7}), call("after", input={"id": 7})]


def test_a_result_from_another_child_is_stale() -> None:
    command = CompleteStep(step="child", attempt=1, task_id="i-1.child.0", output={"k": {"id": 7}})
    assert when(parent_waiting(), command, PARENT) == []


def test_a_child_failure_fails_the_parent_step() -> None:
    error = StepError(message=f"child workflow {CHILD} failed: bad request", retryable=False, kind="child")
    assert when(parent_waiting(), FailStep(step="child", attempt=1, task_id=CHILD, error=error), PARENT) == [
        StepFailed(step="child", attempt=1, error=error), WorkflowFailed(step="child", error=error),
    ]


def test_parent_and_child_talk_through_the_outbox_end_to_end() -> None:
    parent = run(PARENT, context={"user": "ada"}, correlation_id="c-1")
    events, parent_after = decide_and_fold(parent, env(complete("a")), PARENT, NOW)
    [(_, start)] = plan(parent, events, KEYS, 0).outbox
    child, outbox = INITIAL, []
    for command in (decoded(start),
                    CompleteStep(step="k", attempt=1, output={"id": 9})):
        events, after = decide_and_fold(child, env(command, instance_id=start["id"]), KID, NOW)
        outbox += plan(child, events, KEYS, 0).outbox
        child = after
    assert child.status == "completed" and child.correlation_id == "c-1"
    [(_, reply)] = outbox
    events = decide(parent_after, env(decoded(reply)), PARENT, NOW)
    assert events == [done("child", 1, {"id": 9}), call("after", input={"id": 9})]


# ---------------------------------------------------------------------------
# saga compensation
# ---------------------------------------------------------------------------
SAGA = bare(
    svc("reserve"), svc("charge", depends_on=["reserve"]), svc("ship", depends_on=["charge"]),
    compensation={"steps": [svc("undo_reserve"), svc("undo_charge")]},
)


def test_a_final_failure_starts_compensation_in_reverse_order() -> None:
    state = run(SAGA, complete("reserve"), complete("charge"))
    events, after = decide_and_fold(state, env(fail("ship", error=FATAL)), SAGA, NOW)
    assert events == [
        StepFailed(step="ship", attempt=1, error=FATAL),
        CompensationStarted(steps=["undo_charge", "undo_reserve"], step="ship", error=FATAL),
        call("undo_charge"),
    ]
    assert after.status == "compensating"


def test_compensation_steps_run_one_at_a_time_and_end_compensated() -> None:
    state = run(SAGA, complete("reserve"), complete("charge"), fail("ship", error=FATAL))
    assert when(state, complete("undo_charge"), SAGA) == [done("undo_charge"), call("undo_reserve")]
    state = run(SAGA, complete("reserve"), complete("charge"), fail("ship", error=FATAL), complete("undo_charge"))
    events, after = decide_and_fold(state, env(complete("undo_reserve")), SAGA, NOW)
    assert events == [done("undo_reserve"), WorkflowCompensated(step="ship", error=FATAL)]
    assert after.status == "compensated"


def test_a_retryable_failure_with_attempts_left_does_not_compensate_yet() -> None:
    definition = bare(svc("a", retry_policy={"max_attempts": 2}), compensation={"steps": [svc("undo")]})
    state = run(definition)
    assert when(state, fail("a"), definition) == [StepFailed(step="a", attempt=1, error=BOOM, retry_at=NOW + 1000)]


TARGETED = bare(
    svc("a"), svc("b"), svc("c", depends_on=["a", "b"]),
    compensation={"steps": [svc("undo_a", compensates="a"), svc("undo_b", compensates="b"),
                            svc("undo_c", compensates="c"), svc("notify_ops")]},
)


def test_compensation_follows_the_completion_order_of_the_targets_and_skips_targets_that_never_completed() -> None:
    # b completed before a: a is undone first, although the block lists undo_a first.
    state = run(TARGETED, (complete("b"), T0 + 1), (complete("a"), T0 + 2))
    assert when(state, fail("c", error=FATAL), TARGETED) == [
        StepFailed(step="c", attempt=1, error=FATAL),
        CompensationStarted(steps=["undo_a", "undo_b", "notify_ops"], step="c", error=FATAL),
        call("undo_a"),
    ]
    state = run(TARGETED, (complete("a"), T0 + 1), (complete("b"), T0 + 2))
    assert when(state, fail("c", error=FATAL), TARGETED)[1] == CompensationStarted(
        steps=["undo_b", "undo_a", "notify_ops"], step="c", error=FATAL)


def test_a_compensation_step_whose_condition_is_false_is_skipped() -> None:
    definition = bare(svc("a"), svc("b", depends_on=["a"]),
                      compensation={"steps": [svc("undo_a"), svc("undo_b", condition="steps.b.completed")]})
    state = run(definition, complete("a"))
    assert when(state, fail("b", error=FATAL), definition) == [
        StepFailed(step="b", attempt=1, error=FATAL),
        CompensationStarted(steps=["undo_b", "undo_a"], step="b", error=FATAL),
        StepSkipped(step="undo_b", attempt=0, reason="condition 'steps.b.completed' is false"),
        call("undo_a"),
    ]


def test_every_compensation_step_skipped_ends_compensated_at_once() -> None:
    definition = bare(svc("a"), compensation={"steps": [svc("undo", condition="steps.a.completed")]})
    state = run(definition)
    assert when(state, fail("a", error=FATAL), definition) == [
        StepFailed(step="a", attempt=1, error=FATAL),
        CompensationStarted(steps=["undo"], step="a", error=FATAL),
        StepSkipped(step="undo", attempt=0, reason="condition 'steps.a.completed' is false"),
        WorkflowCompensated(step="a", error=FATAL),
    ]


def test_a_terminate_handler_fails_without_compensating() -> None:
    definition = bare(svc("a"), svc("b", depends_on=["a"], on_failure={"action": "terminate"}),
                      compensation={"steps": [svc("undo")]})
    state = run(definition, complete("a"))
    assert when(state, fail("b", error=FATAL), definition) == [
        StepFailed(step="b", attempt=1, error=FATAL), WorkflowFailed(step="b", error=FATAL),
    ]


def test_a_compensate_handler_compensates() -> None:
    definition = bare(svc("a"), svc("b", depends_on=["a"], on_failure={"action": "compensate"}),
                      compensation={"steps": [svc("undo")]})
    state = run(definition, complete("a"))
    assert when(state, fail("b", error=FATAL), definition) == [
        StepFailed(step="b", attempt=1, error=FATAL), CompensationStarted(steps=["undo"], step="b", error=FATAL),
        call("undo"),
    ]


def test_a_compensation_step_failing_for_good_fails_the_workflow() -> None:
    state = run(SAGA, complete("reserve"), complete("charge"), fail("ship", error=FATAL))
    error = StepError(message="compensation step 'undo_charge' failed: bad request", retryable=False,
                      kind="compensation")
    events, after = decide_and_fold(state, env(fail("undo_charge", error=FATAL)), SAGA, NOW)
    assert events == [StepFailed(step="undo_charge", attempt=1, error=FATAL),
                      WorkflowFailed(step="undo_charge", error=error)]
    assert after.status == "failed"


def test_a_compensation_step_retries_under_its_policy() -> None:
    definition = bare(svc("a"), compensation={"steps": [svc("undo", retry_policy={"max_attempts": 2})]})
    state = run(definition, fail("a", error=FATAL))
    assert when(state, fail("undo"), definition) == [StepFailed(step="undo", attempt=1, error=BOOM,
                                                                retry_at=NOW + 1000)]
    state = run(definition, fail("a", error=FATAL), fail("undo"))
    assert when(state, timer("retry", "undo", 1), definition) == [call("undo", 2)]


PARALLEL_SAGA = bare(
    svc("a"), svc("b", retry_policy={"max_attempts": 3}), svc("c", depends_on=["b"]),
    {"name": "w", "type": "event_wait", "event_type": "e", "timeout": "1h"},
    {"name": "nap", "type": "delay", "duration": "1h"},
    compensation={"steps": [svc("undo")]},
)


def test_a_main_step_result_during_compensation_is_recorded_and_starts_nothing() -> None:
    state = run(PARALLEL_SAGA, fail("a", error=FATAL))
    assert state.status == "compensating"
    assert when(state, complete("b", output=1), PARALLEL_SAGA) == [done("b", output=1)]


def test_a_main_step_retry_timer_during_compensation_starts_nothing() -> None:
    state = run(PARALLEL_SAGA, fail("b"), fail("a", error=FATAL))
    assert state.status == "compensating" and state.step("b").status == "retrying"
    assert when(state, timer("retry", "b", 1), PARALLEL_SAGA) == []


def test_a_compensated_instance_leaves_no_wait_or_timeout_armed() -> None:
    state = run(PARALLEL_SAGA, fail("a", error=FATAL))
    assert state.step("w").status == "waiting"
    events, after = decide_and_fold(state, env(complete("undo")), PARALLEL_SAGA, NOW)
    assert after.status == "compensated"
    fx = plan(state, events, KEYS, 3)
    assert (KEYS.wait_index(3, "e", (), []), wait_member(IID, "w", 1)) in fx.srem
    assert timer_member(IID, "timeout", "w", 1) in fx.timers_rem
    assert timer_member(IID, "delay", "nap", 1) in fx.timers_rem


def test_a_compensate_handler_on_a_paused_instance_waits_for_resume() -> None:
    definition = bare(svc("a", on_failure={"action": "compensate"}), svc("b"), compensation={"steps": [svc("undo")]})
    state = run(definition, PauseWorkflow())
    assert when(state, fail("a", error=FATAL), definition) == [StepFailed(step="a", attempt=1, error=FATAL)]


def test_a_compensate_handler_does_not_reopen_an_instance_that_failed_without_compensating() -> None:
    definition = bare(svc("a", on_failure={"action": "terminate"}), svc("b", on_failure={"action": "compensate"}),
                      compensation={"steps": [svc("undo")]})
    state = run(definition, fail("a", error=FATAL))
    assert state.status == "failed"
    assert when(state, fail("b", error=FATAL), definition) == [StepFailed(step="b", attempt=1, error=FATAL)]


def test_a_compensated_instance_refuses_control_commands() -> None:
    state = run(SAGA, complete("reserve"), complete("charge"), fail("ship", error=FATAL), complete("undo_charge"),
                complete("undo_reserve"))
    assert state.status == "compensated"
    assert rejected("retry", "cannot retry an instance that is compensated", state, RetryWorkflow(), SAGA)
    assert rejected("cancel", "cannot cancel an instance that is compensated", state, CancelWorkflow(), SAGA)
    assert when(state, complete("ship"), SAGA) == []


# ---------------------------------------------------------------------------
# on_timeout of an event wait
# ---------------------------------------------------------------------------
def waiting_on(on_timeout: dict[str, Any], compensation: bool = False) -> tuple[Definition, State]:
    extra = {"compensation": {"steps": [svc("undo")]}} if compensation else {}
    definition = bare(svc("a"), {"name": "w", "type": "event_wait", "event_type": "e", "timeout": "1h",
                                 "depends_on": ["a"], "on_timeout": on_timeout},
                      svc("after", depends_on=["w"]), **extra)
    return definition, run(definition, complete("a"))


TIMED_OUT = StepError(message="timed out after 3600000 ms waiting for event 'e'", retryable=False, kind="timeout")


def test_on_timeout_fail_fails_the_workflow() -> None:
    definition, state = waiting_on({"action": "fail"})
    assert when(state, timer("timeout", "w", 1), definition) == [
        StepFailed(step="w", attempt=1, error=TIMED_OUT), WorkflowFailed(step="w", error=TIMED_OUT),
    ]


def test_on_timeout_continue_lets_the_dependents_run() -> None:
    definition, state = waiting_on({"action": "continue"})
    assert when(state, timer("timeout", "w", 1), definition) == [
        StepFailed(step="w", attempt=1, error=TIMED_OUT, continued=True), call("after"),
    ]


def test_on_timeout_compensate_compensates() -> None:
    definition, state = waiting_on({"action": "compensate"}, compensation=True)
    assert when(state, timer("timeout", "w", 1), definition) == [
        StepFailed(step="w", attempt=1, error=TIMED_OUT),
        CompensationStarted(steps=["undo"], step="w", error=TIMED_OUT),
        call("undo"),
    ]


def test_on_timeout_notify_sends_a_notification_and_fails() -> None:
    definition, state = waiting_on({"action": "notify", "target": "ops", "endpoint": "/alerts"})
    assert when(state, timer("timeout", "w", 1), definition) == [
        StepFailed(step="w", attempt=1, error=TIMED_OUT),
        NotificationScheduled(step="w", attempt=1, task_id=tid("w", 1) + ":notify", queue="ops", endpoint="/alerts",
                              input={"workflow": "t", "instance_id": IID, "step": "w", "attempt": 1,
                                     "error": {"message": TIMED_OUT.message, "kind": "timeout",
                                               "retryable": False}}),
        WorkflowFailed(step="w", error=TIMED_OUT),
    ]


def test_a_timeout_for_an_event_that_already_arrived_changes_nothing() -> None:
    definition, state = waiting_on({"action": "compensate"}, compensation=True)
    state = fold(state, when(state, DeliverEvent(step="w", attempt=1, event_type="e", event_id="1-0"), definition))
    assert state.step("w").status == "completed"
    assert when(state, timer("timeout", "w", 1), definition) == []


# ---------------------------------------------------------------------------
# retry jitter
# ---------------------------------------------------------------------------
JITTERY = bare(svc("a", retry_policy={"max_attempts": 3, "backoff_multiplier": 1000, "jitter": 0.5}))


def retry_at(instance_id: str, definition: Definition = JITTERY) -> int:
    state = run(definition, instance_id=instance_id)
    command = FailStep(step="a", attempt=1, error=BOOM, task_id=f"{instance_id}:a:1")
    [event] = decide(state, env(command, instance_id=instance_id), definition, NOW)
    assert isinstance(event, StepFailed) and event.retry_at is not None
    return event.retry_at


def test_a_jittered_delay_falls_in_its_band_and_is_derived_from_the_instance_step_and_attempt() -> None:
    delay = retry_at(IID) - NOW
    assert 500 <= delay < 1500
    spread = zlib.crc32(f"{IID}:a:1".encode()) / 2**32
    assert delay == JITTERY.step("a").retry_policy.delay_ms(1, spread)


def test_a_jittered_delay_is_the_same_on_every_replay() -> None:
    assert retry_at(IID) == retry_at(IID)


def test_jittered_delays_spread_across_instances() -> None:
    delays = {retry_at(f"i-{n}") - NOW for n in range(10)}
    assert len(delays) > 1
    assert all(500 <= d < 1500 for d in delays)


def test_the_yaml_exponential_backoff_jitters_by_ten_percent() -> None:
    definition = bare(svc("a", retry_policy={"max_attempts": 3, "backoff": "exponential", "initial_delay": "10s"}))
    delays = {retry_at(f"i-{n}", definition) - NOW for n in range(10)}
    assert len(delays) > 1 and all(9_000 <= d < 11_000 for d in delays)


# ---------------------------------------------------------------------------
# signals
# ---------------------------------------------------------------------------
SIGNALLED = bare(svc("a"), svc("b", depends_on=["a"], input={"by": "{{ signals.approval.by }}"}),
                 svc("c", depends_on=["a"], condition="signals.approval.ok == true"))


def test_a_signal_is_recorded_and_readable_in_templates_and_conditions() -> None:
    state = run(SIGNALLED)
    payload = {"by": "bob", "ok": False}
    events, after = decide_and_fold(state, env(SignalWorkflow(name="approval", payload=payload)), SIGNALLED, NOW)
    assert events == [SignalReceived(name="approval", payload=payload)]
    assert after.signals == {"approval": payload}
    assert when(after, complete("a"), SIGNALLED) == [
        done("a"), call("b", input={"by": "bob"}),
        StepSkipped(step="c", attempt=0, reason="condition 'signals.approval.ok == true' is false"),
    ]


def test_a_later_signal_with_the_same_name_replaces_the_payload() -> None:
    state = run(SIGNALLED, SignalWorkflow(name="approval", payload={"by": "bob", "ok": False}),
                SignalWorkflow(name="approval", payload={"by": "eve", "ok": True}))
    assert when(state, complete("a"), SIGNALLED) == [done("a"), call("b", input={"by": "eve"}), call("c")]


def test_a_paused_instance_records_a_signal() -> None:
    state = run(SIGNALLED, PauseWorkflow())
    assert when(state, SignalWorkflow(name="x", payload=1), SIGNALLED) == [SignalReceived(name="x", payload=1)]


def test_a_signal_to_a_finished_instance_is_refused() -> None:
    definition = bare(svc("a"))
    completed = run(definition, complete("a"))
    assert rejected("signal", "cannot signal an instance that is completed", completed,
                    SignalWorkflow(name="x"), definition)
    failed = run(definition, fail("a", error=FATAL))
    assert rejected("signal", "cannot signal an instance that is failed", failed, SignalWorkflow(name="x"),
                    definition)


# ---------------------------------------------------------------------------
# retry --from-step
# ---------------------------------------------------------------------------
CHAIN = bare(svc("a"), svc("b", depends_on=["a"], input={"x": "{{ steps.a.output.x }}"}),
             svc("c", depends_on=["b"]), svc("side", depends_on=["a"]))


def chain_failed() -> State:
    state = run(CHAIN, complete("a", output={"x": 1}), complete("b"), complete("side"), fail("c", error=FATAL))
    assert state.status == "failed"
    return state


def test_retry_from_a_step_rewinds_it_and_its_descendants_with_the_edited_input() -> None:
    events, after = decide_and_fold(chain_failed(), env(RetryWorkflow(from_step="b", input={"x": 99})), CHAIN, NOW)
    assert events == [WorkflowRetried(steps=["b", "c"], from_step="b", input={"x": 99}),
                      call("b", 2, input={"x": 99}, run=2)]  # a rewind starts a new run
    assert after.step("side").status == "completed" and after.step("c").status == "pending"
    assert when(after, complete("b", 2), CHAIN) == [done("b", 2), call("c", 2, run=2)]


def test_retry_from_a_step_without_input_renders_its_input_again() -> None:
    assert when(chain_failed(), RetryWorkflow(from_step="a"), CHAIN) == [
        WorkflowRetried(steps=["a", "b", "side", "c"], from_step="a"), call("a", 2, run=2),
    ]


def test_retry_from_an_unknown_step_is_refused() -> None:
    assert rejected("retry", "cannot retry from 'nope': no such step in 't'", chain_failed(),
                    RetryWorkflow(from_step="nope"), CHAIN)


def test_retry_with_input_but_no_step_is_refused() -> None:
    assert rejected("retry", "retry --input needs --from-step: the step the edited input is for", chain_failed(),
                    RetryWorkflow(input={"x": 2}), CHAIN)


def test_retry_from_a_step_is_refused_unless_the_instance_failed() -> None:
    assert rejected("retry", "cannot retry an instance that is running", run(CHAIN),
                    RetryWorkflow(from_step="a"), CHAIN)


def test_retry_from_a_sub_workflow_step_starts_the_child_with_the_edited_input() -> None:
    definition = bare({"name": "child", "type": "sub_workflow", "workflow": "kid", "input": {"u": "{{ input.u }}"}})
    state = run(definition, FailStep(step="child", attempt=1, task_id=CHILD, error=FATAL), context={"u": 1})
    assert state.status == "failed"
    assert when(state, RetryWorkflow(from_step="child", input={"u": 2}), definition) == [
        WorkflowRetried(steps=["child"], from_step="child", input={"u": 2}),
        ChildStarted(step="child", attempt=2, child_id="i-1.child.2", workflow="kid", input={"u": 2}),
    ]


# ---------------------------------------------------------------------------
# spec.output
# ---------------------------------------------------------------------------
def test_output_values_are_rendered_from_the_steps_and_input() -> None:
    definition = bare(svc("a"), output={"values": {"user": "{{ steps.a.output.id }}", "mail": "{{ input.email }}"}})
    state = run(definition, context={"email": "ada@x"})
    assert when(state, complete("a", output={"id": 7}), definition) == [
        done("a", output={"id": 7}), WorkflowCompleted(output={"user": 7, "mail": "ada@x"}),
    ]


def test_output_values_that_cannot_render_fail_the_workflow() -> None:
    definition = bare(svc("a"), output={"values": {"user": "{{ steps.a.output.nope }}"}})
    assert when(run(definition), complete("a", output={}), definition) == [
        done("a", output={}),
        WorkflowFailed(error=StepError(message="cannot build the workflow output: steps.a.output.nope is not set",
                                       retryable=False, kind="template")),
    ]


def test_a_schema_only_output_collects_its_fields_from_the_latest_step_outputs_then_the_input() -> None:
    definition = bare(svc("a"), svc("b", depends_on=["a"]), output={"schema": {
        "type": "object", "properties": {"user_id": {}, "status": {}, "email": {}, "absent": {}}}})
    state = run(definition, (complete("a", output={"user_id": 1, "status": "pending"}), T0 + 1),
                context={"email": "ada@x"})
    assert when(state, complete("b", output={"status": "active"}), definition, now=T0 + 2) == [
        done("b", output={"status": "active"}),
        WorkflowCompleted(output={"user_id": 1, "status": "active", "email": "ada@x"}),
    ]


# ---------------------------------------------------------------------------
# the workflow-level deadline
# ---------------------------------------------------------------------------
DEADLINE = bare(svc("a"), svc("b", depends_on=["a"]), config={"timeout": "30m"})
TIMED_OUT_WF = StepError(message="workflow timed out after 1800000 ms", retryable=False, kind="timeout")


def test_the_deadline_is_armed_at_start() -> None:
    events = when(INITIAL, StartWorkflow(workflow="t"), DEADLINE, now=T0)
    assert events == [*started(DEADLINE), call("a")]
    assert (T0 + 1_800_000, timer_member(IID, "workflow_timeout", "", 0)) in plan(INITIAL, events, KEYS, 0).timers_add


def test_the_deadline_fails_a_running_or_paused_workflow() -> None:
    fire = timer("workflow_timeout", "", 0)
    assert when(run(DEADLINE), fire, DEADLINE) == [WorkflowFailed(error=TIMED_OUT_WF)]
    assert when(run(DEADLINE, PauseWorkflow()), fire, DEADLINE) == [WorkflowFailed(error=TIMED_OUT_WF)]


def test_the_deadline_changes_nothing_once_the_workflow_failed_or_was_cancelled() -> None:
    fire = timer("workflow_timeout", "", 0)
    assert when(run(DEADLINE, fail("a", error=FATAL)), fire, DEADLINE) == []
    assert when(run(DEADLINE, CancelWorkflow()), fire, DEADLINE) == []


def test_the_deadline_is_disarmed_when_compensation_starts() -> None:
    definition = bare(svc("a"), config={"timeout": "30m"}, compensation={"steps": [svc("undo")]})
    state = run(definition)
    events = when(state, fail("a", error=FATAL), definition)
    assert isinstance(events[1], CompensationStarted)
    assert timer_member(IID, "workflow_timeout", "", 0) in plan(state, events, KEYS, 0).timers_rem


# ---------------------------------------------------------------------------
# step output mapping
# ---------------------------------------------------------------------------
MAPPED = bare(svc("a", output={"user_id": "{{ response.id }}", "label": "user-{{ response.id }}"}),
              svc("b", depends_on=["a"], input={"u": "{{ steps.a.output.user_id }}"}))


def test_a_step_maps_the_response_to_its_output() -> None:
    assert when(run(MAPPED), complete("a", output={"id": 5, "noise": True}), MAPPED) == [
        done("a", output={"user_id": 5, "label": "user-5"}), call("b", input={"u": 5}),
    ]


def test_a_response_missing_a_mapped_field_fails_the_step_for_good() -> None:
    error = StepError(message="cannot map the output of 'a': response.id is not set", retryable=False,
                      kind="template")
    assert when(run(MAPPED), complete("a", output={"other": 1}), MAPPED) == [
        StepFailed(step="a", attempt=1, error=error), WorkflowFailed(step="a", error=error),
    ]


def test_an_event_wait_filter_can_read_a_signal() -> None:
    definition = bare(svc("a"), {"name": "w", "type": "event_wait", "event_type": "e", "depends_on": ["a"],
                                 "filter": {"k": "{{ signals.key }}"}})
    state = run(definition, SignalWorkflow(name="key", payload="v"))
    assert when(state, complete("a"), definition) == [
        done("a"), StepWaiting(step="w", attempt=1, event_type="e", filter={"k": "v"}),
    ]


def test_resume_dispatches_nothing_for_a_compensating_instance() -> None:
    state = run(SAGA, complete("reserve"), complete("charge"), fail("ship", error=FATAL))
    assert rejected("pause", "cannot pause an instance that is compensating", state, PauseWorkflow(), SAGA)
    assert rejected("resume", "cannot resume an instance that is compensating", state, ResumeWorkflow(), SAGA)


def test_cancel_while_compensating_is_accepted() -> None:
    state = run(SAGA, complete("reserve"), complete("charge"), fail("ship", error=FATAL))
    assert when(state, CancelWorkflow(reason="stop"), SAGA) == [WorkflowCancelled(reason="stop")]
