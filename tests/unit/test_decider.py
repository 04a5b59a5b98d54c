"""The decider, given/when/then: ``decide(fold(INITIAL, given), command) == [...]``.

No Redis, no fixtures: each test states the history it starts from, the one
command it sends and every event it expects. The agent example
(engine/dev/examples/agent-task-execution.json) is the main subject; small inline
definitions cover the graph shapes it lacks.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.core.decide import decide, decide_and_fold
from engine.core.definition import Definition, load_definition_file, parse_definition
from engine.core.evolve import fold
from engine.core.ids import encode_shape, filter_shape
from engine.core.model import (
    INITIAL,
    AnyCommand,
    CancelWorkflow,
    CommandRejected,
    CompleteStep,
    DeliverEvent,
    Envelope,
    Event,
    FailStep,
    FireTimer,
    NotificationScheduled,
    PauseWorkflow,
    ResumeWorkflow,
    RetryWorkflow,
    StartWorkflow,
    State,
    StepCompleted,
    StepError,
    StepFailed,
    StepScheduled,
    StepWaiting,
    WorkflowCancelled,
    WorkflowCompleted,
    WorkflowCreated,
    WorkflowFailed,
    WorkflowPaused,
    WorkflowResumed,
    WorkflowRetried,
    WorkflowStarted,
)
from engine.store.keys import Keys
from engine.store.plan import plan, timer_member, wait_member

EXAMPLES = Path(__file__).resolve().parents[2] / "engine" / "dev" / "examples"
AGENT = load_definition_file(EXAMPLES / "agent-task-execution.json")
CTX = {"task_id": "t-1", "agent_id": "a-1", "project_id": "p-1"}
IID = "i-1"
T0 = 1_700_000_000_000
NOW = T0 + 5_000

PREP, ASSIGN, MONITOR, RESULTS = "task_preparation", "agent_assignment", "execution_monitoring", "result_processing"
HOUR = 3_600_000
BOOM = StepError(message="boom")
FATAL = StepError(message="bad request", retryable=False)

_entry_ids = itertools.count(1)


# ---------------------------------------------------------------------------
# Helpers: build envelopes, fold histories, name the agent example's events
# ---------------------------------------------------------------------------
def env(command: AnyCommand, cmd_id: str | None = None) -> Envelope:
    return Envelope(instance_id=IID, entry_id=f"{next(_entry_ids)}-0", command=command, cmd_id=cmd_id)


def given(*history: Event | list[Event]) -> State:
    events: list[Event] = []
    for item in history:
        events.extend(item if isinstance(item, list) else [item])
    return fold(INITIAL, events, T0)


def when(state: State, command: AnyCommand, definition: Definition = AGENT, now: int = NOW,
         cmd_id: str | None = None) -> list[Event]:
    return decide(state, env(command, cmd_id), definition, now)


def run(definition: Definition, *commands: AnyCommand, context: dict[str, Any] | None = None,
        now: int = T0) -> State:
    """A history produced by the decider itself, for tests whose subject comes later."""
    state = INITIAL
    for command in (StartWorkflow(workflow=definition.name, context=CTX if context is None else context),
                    *commands):
        _, state = decide_and_fold(state, env(command), definition, now)
    return state


def tid(step: str, attempt: int) -> str:
    return f"{IID}:{step}:{attempt}"


def started(definition: Definition = AGENT, context: dict[str, Any] = CTX) -> list[Event]:
    return [
        WorkflowCreated(instance_id=IID, workflow=definition.name, version=definition.version, context=context),
        WorkflowStarted(),
    ]


def call(step: str, attempt: int = 1, *, queue: str = "svc", endpoint: str | None = None,
         input: Any = None, timeout_at: int | None = None, run: int = 1) -> StepScheduled:
    """``run``: the attempt this run of the step began at (the event leaves it out when that is this one)."""
    return StepScheduled(step=step, attempt=attempt, task_id=tid(step, attempt), queue=queue,
                         endpoint=endpoint, input={} if input is None else input, timeout_at=timeout_at,
                         run=None if run == attempt else run)


def prep(attempt: int = 1) -> StepScheduled:
    return call(PREP, attempt, queue="planning-system", endpoint="/tasks/t-1/prepare")


def assign(attempt: int = 1) -> StepScheduled:
    return call(ASSIGN, attempt, queue="agent-orchestrator", endpoint="/agents/a-1/tasks")


def monitor(attempt: int = 1, at: int = NOW) -> StepWaiting:
    return StepWaiting(step=MONITOR, attempt=attempt, event_type="agent.task_completed",
                       filter={"task_id": "t-1", "agent_id": "a-1"}, timeout_at=at + HOUR)


def results(attempt: int = 1) -> StepScheduled:
    return call(RESULTS, attempt, queue="planning-system", endpoint="/tasks/t-1/results")


def done(step: str, attempt: int = 1, output: Any = None) -> StepCompleted:
    return StepCompleted(step=step, attempt=attempt, output=output)


def complete(step: str, attempt: int = 1, output: Any = None, task_id: str | None = None) -> CompleteStep:
    return CompleteStep(step=step, attempt=attempt, output=output, task_id=task_id or tid(step, attempt))


def fail(step: str, attempt: int = 1, error: StepError = BOOM) -> FailStep:
    return FailStep(step=step, attempt=attempt, error=error, task_id=tid(step, attempt))


def agent_event(attempt: int = 1, **data: Any) -> DeliverEvent:
    return DeliverEvent(step=MONITOR, attempt=attempt, event_type="agent.task_completed", event_id="9-0",
                        data={"task_id": "t-1", "agent_id": "a-1", **data})


def bare(*steps: dict[str, Any], **extra: Any) -> Definition:
    return parse_definition({"steps": list(steps), **extra}, name="t", version="1")


def svc(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "type": "service_call", "service": "svc", **fields}


# Histories of the agent example, each the previous one plus a few events.
WAITING = [*started(), prep(), done(PREP), assign(), done(ASSIGN), monitor()]
COMPLETED = [*WAITING, StepCompleted(step=MONITOR, attempt=1, output={"task_id": "t-1", "agent_id": "a-1"},
                                     event_id="9-0"),
             results(), done(RESULTS, output={"ok": True}), WorkflowCompleted(output={RESULTS: {"ok": True}})]
PREP_FAILED = [*started(), prep(), StepFailed(step=PREP, attempt=1, error=FATAL),
               WorkflowFailed(step=PREP, error=FATAL)]
PAUSED = [*started(), prep(), WorkflowPaused()]
CANCELLED = [*started(), prep(), WorkflowCancelled()]


# ---------------------------------------------------------------------------
# start
# ---------------------------------------------------------------------------
def test_start_creates_starts_and_schedules_the_root_with_a_rendered_endpoint() -> None:
    assert when(INITIAL, StartWorkflow(workflow=AGENT.name, context=CTX)) == [*started(), prep()]


def test_start_carries_the_correlation_id_and_the_cmd_id_on_the_first_event() -> None:
    events = when(INITIAL, StartWorkflow(workflow=AGENT.name, context=CTX, correlation_id="c-9"), cmd_id="k1")
    assert events[0] == WorkflowCreated(cmd="k1", instance_id=IID, workflow=AGENT.name, version="1.0.0",
                                        context=CTX, correlation_id="c-9")
    assert [e.cmd for e in events] == ["k1", None, None]


def test_a_second_start_is_a_no_op() -> None:
    assert when(given(started(), prep()), StartWorkflow(workflow=AGENT.name, context={"other": 1})) == []


def test_start_schedules_every_root_of_a_dag() -> None:
    definition = bare(svc("a"), svc("b"), svc("c", depends_on=["a", "b"]))
    assert when(INITIAL, StartWorkflow(workflow="t"), definition) == [
        *started(definition, {}), call("a"), call("b"),
    ]


# ---------------------------------------------------------------------------
# advancing along the graph
# ---------------------------------------------------------------------------
def test_a_completed_step_schedules_its_dependent() -> None:
    assert when(given(started(), prep()), complete(PREP, output={"n": 1})) == [done(PREP, output={"n": 1}), assign()]


def test_a_join_waits_for_both_roots() -> None:
    definition = bare(svc("a"), svc("b"), svc("c", depends_on=["a", "b"], input={"x": "${steps.a.output.x}"}))
    history = [*started(definition, {}), call("a"), call("b")]
    assert when(given(history), complete("a", output={"x": 1}), definition) == [done("a", output={"x": 1})]
    assert when(given(history, done("a", output={"x": 1})), complete("b"), definition) == [
        done("b"), call("c", input={"x": 1}),
    ]


def test_sequence_only_ordering_runs_each_sequence_after_the_previous_one() -> None:
    definition = bare(svc("s1", sequence=1), svc("s2a", sequence=2), svc("s2b", sequence=2), svc("s3", sequence=3))
    history = [*started(definition, {}), call("s1")]
    assert when(given(history), complete("s1"), definition) == [done("s1"), call("s2a"), call("s2b")]
    history += [done("s1"), call("s2a"), call("s2b")]
    assert when(given(history), complete("s2b"), definition) == [done("s2b")]
    assert when(given(history, done("s2b")), complete("s2a"), definition) == [done("s2a"), call("s3")]


def test_the_workflow_output_is_the_outputs_of_its_sink_steps() -> None:
    definition = bare(svc("root"), svc("left", depends_on=["root"]), svc("right", depends_on=["root"]))
    history = [*started(definition, {}), call("root"), done("root", output=0), call("left"), call("right"),
               done("left", output="L")]
    assert when(given(history), complete("right", output="R"), definition) == [
        done("right", output="R"), WorkflowCompleted(output={"left": "L", "right": "R"}),
    ]


def test_the_agent_example_completes_with_the_result_step_output() -> None:
    history = [*WAITING, StepCompleted(step=MONITOR, attempt=1, output={"task_id": "t-1", "agent_id": "a-1"},
                                       event_id="9-0"), results()]
    assert when(given(history), complete(RESULTS, output={"ok": True})) == [
        done(RESULTS, output={"ok": True}), WorkflowCompleted(output={RESULTS: {"ok": True}}),
    ]


# ---------------------------------------------------------------------------
# retries
# ---------------------------------------------------------------------------
def test_a_retryable_failure_schedules_a_retry_after_the_backoff() -> None:
    assert when(given(started(), prep()), fail(PREP)) == [
        StepFailed(step=PREP, attempt=1, error=BOOM, retry_at=NOW + 1000),
    ]


def test_the_backoff_grows_with_each_attempt() -> None:
    history = [*started(), prep(), StepFailed(step=PREP, attempt=1, error=BOOM, retry_at=T0 + 1000), prep(2)]
    assert when(given(history), fail(PREP, 2)) == [StepFailed(step=PREP, attempt=2, error=BOOM, retry_at=NOW + 2000)]


def test_the_retry_timer_schedules_the_next_attempt() -> None:
    history = [*started(), prep(), StepFailed(step=PREP, attempt=1, error=BOOM, retry_at=T0 + 1000)]
    assert when(given(history), FireTimer(kind="retry", step=PREP, attempt=1)) == [prep(2)]


@pytest.mark.parametrize("attempt", [0, 2])
def test_a_retry_timer_for_another_attempt_changes_nothing(attempt: int) -> None:
    history = [*started(), prep(), StepFailed(step=PREP, attempt=1, error=BOOM, retry_at=T0 + 1000)]
    assert when(given(history), FireTimer(kind="retry", step=PREP, attempt=attempt)) == []


def test_exhausted_attempts_fall_back_to_the_handler_retry_then_fail_the_workflow() -> None:
    history: list[Event] = [*started(), prep(), done(PREP), assign()]
    # Three attempts from the retry policy, backing off 1 s then 2 s.
    for attempt, delay in ((1, 1000), (2, 2000)):
        assert when(given(history), fail(ASSIGN, attempt)) == [
            StepFailed(step=ASSIGN, attempt=attempt, error=BOOM, retry_at=NOW + delay),
        ]
        history += [StepFailed(step=ASSIGN, attempt=attempt, error=BOOM, retry_at=T0 + delay), assign(attempt + 1)]
    # Then the error handler's three retries, 60 s apart.
    for attempt in (3, 4, 5):
        assert when(given(history), fail(ASSIGN, attempt)) == [
            StepFailed(step=ASSIGN, attempt=attempt, error=BOOM, retry_at=NOW + 60_000, handler_retry=True),
        ]
        history.append(StepFailed(step=ASSIGN, attempt=attempt, error=BOOM, retry_at=T0 + 60_000,
                                  handler_retry=True))
        assert when(given(history), FireTimer(kind="retry", step=ASSIGN, attempt=attempt)) == [assign(attempt + 1)]
        history.append(assign(attempt + 1))
    assert when(given(history), fail(ASSIGN, 6)) == [
        StepFailed(step=ASSIGN, attempt=6, error=BOOM), WorkflowFailed(step=ASSIGN, error=BOOM),
    ]


def test_a_non_retryable_error_skips_the_retries() -> None:
    assert when(given(started(), prep()), fail(PREP, error=FATAL)) == [
        StepFailed(step=PREP, attempt=1, error=FATAL), WorkflowFailed(step=PREP, error=FATAL),
    ]


def test_a_non_retryable_error_skips_the_handler_retry_too() -> None:
    history = [*started(), prep(), done(PREP), assign()]
    assert when(given(history), fail(ASSIGN, error=FATAL)) == [
        StepFailed(step=ASSIGN, attempt=1, error=FATAL), WorkflowFailed(step=ASSIGN, error=FATAL),
    ]


# ---------------------------------------------------------------------------
# event waits
# ---------------------------------------------------------------------------
def test_an_event_wait_step_waits_with_the_resolved_filter_and_a_timeout() -> None:
    history = [*started(), prep(), done(PREP), assign()]
    assert when(given(history), complete(ASSIGN)) == [done(ASSIGN), monitor(at=NOW)]


def test_a_matching_event_completes_the_wait_with_the_event_data_as_output() -> None:
    data = {"task_id": "t-1", "agent_id": "a-1", "result": 42}
    assert when(given(WAITING), agent_event(result=42)) == [
        StepCompleted(step=MONITOR, attempt=1, output=data, event_id="9-0"), results(),
    ]


@pytest.mark.parametrize(
    "command",
    [
        agent_event(task_id="t-2"),
        agent_event(agent_id="a-2"),
        DeliverEvent(step=MONITOR, attempt=1, event_type="agent.task_completed", event_id="9-0",
                     data={"task_id": "t-1"}),
        agent_event(attempt=2),
        agent_event(attempt=0),
        DeliverEvent(step=MONITOR, attempt=1, event_type="agent.task_failed", event_id="9-0",
                     data={"task_id": "t-1", "agent_id": "a-1"}),
        DeliverEvent(step=RESULTS, attempt=1, event_type="agent.task_completed", event_id="9-0",
                     data={"task_id": "t-1", "agent_id": "a-1"}),
        DeliverEvent(step="nope", attempt=1, event_type="agent.task_completed", event_id="9-0", data={}),
    ],
    ids=["wrong-task", "wrong-agent", "missing-field", "later-attempt", "earlier-attempt", "wrong-type",
         "step-not-waiting", "unknown-step"],
)
def test_a_non_matching_event_changes_nothing(command: DeliverEvent) -> None:
    assert when(given(WAITING), command) == []


def test_a_wait_timeout_fails_the_step_notifies_the_coordinator_and_fails_the_workflow() -> None:
    error = StepError(message="timed out after 3600000 ms waiting for event 'agent.task_completed'",
                      retryable=True, kind="timeout")
    assert when(given(WAITING), FireTimer(kind="timeout", step=MONITOR, attempt=1), now=NOW + HOUR) == [
        StepFailed(step=MONITOR, attempt=1, error=error),
        NotificationScheduled(
            step=MONITOR, attempt=1, task_id=tid(MONITOR, 1) + ":notify", queue="project-coordinator",
            endpoint="/projects/p-1/notifications",
            input={"workflow": AGENT.name, "instance_id": IID, "step": MONITOR, "attempt": 1,
                   "error": {"message": error.message, "kind": "timeout", "retryable": True}},
        ),
        WorkflowFailed(step=MONITOR, error=error),
    ]


def test_a_service_call_timeout_retries_under_the_step_policy() -> None:
    definition = bare(svc("a", timeout="5s", retry_policy={"max_attempts": 2, "backoff_multiplier": 100}))
    history = [*started(definition, {}), call("a", timeout_at=T0 + 5000)]
    error = StepError(message="timed out after 5000 ms waiting for the step's result", kind="timeout")
    assert when(given(history), FireTimer(kind="timeout", step="a", attempt=1), definition) == [
        StepFailed(step="a", attempt=1, error=error, retry_at=NOW + 100),
    ]


@pytest.mark.parametrize("history", [COMPLETED, [*WAITING[:-1], monitor(2)]], ids=["after-completion", "old-attempt"])
def test_a_stale_timeout_changes_nothing(history: list[Event]) -> None:
    assert when(given(history), FireTimer(kind="timeout", step=MONITOR, attempt=1)) == []


# ---------------------------------------------------------------------------
# stale results
# ---------------------------------------------------------------------------
RETRIED_PREP = [*started(), prep(), StepFailed(step=PREP, attempt=1, error=BOOM, retry_at=T0 + 1000), prep(2)]


@pytest.mark.parametrize(
    ("history", "command"),
    [
        (RETRIED_PREP, complete(PREP, 1)),
        (RETRIED_PREP, fail(PREP, 1)),
        (RETRIED_PREP, complete(PREP, 2, task_id="someone-else")),
        (RETRIED_PREP, complete(PREP, 3)),
        ([*started(), prep(), done(PREP), assign()], complete(PREP)),
        ([*started(), prep(), done(PREP), assign()], fail(PREP)),
        (COMPLETED, complete(RESULTS)),
        (CANCELLED, complete(PREP)),
        (CANCELLED, fail(PREP)),
        ([*WAITING, WorkflowCancelled()], agent_event()),
        ([*WAITING, WorkflowCancelled()], FireTimer(kind="timeout", step=MONITOR, attempt=1)),
        ([*RETRIED_PREP[:-1], WorkflowCancelled()], FireTimer(kind="retry", step=PREP, attempt=1)),
        ([*started(), prep()], complete(ASSIGN)),
        ([*started(), prep()], complete("nope")),
    ],
    ids=["old-attempt", "old-attempt-failure", "wrong-task-id", "future-attempt", "after-completion",
         "failure-after-completion", "workflow-completed", "after-cancel", "failure-after-cancel",
         "event-after-cancel", "timeout-after-cancel", "retry-after-cancel", "not-scheduled", "unknown-step"],
)
def test_a_stale_result_produces_no_events(history: list[Event], command: AnyCommand) -> None:
    assert when(given(history), command) == []


def test_a_result_without_task_id_is_accepted_for_the_current_attempt() -> None:
    command = CompleteStep(step=PREP, attempt=2)
    assert when(given(RETRIED_PREP), command) == [done(PREP, 2), assign()]


# ---------------------------------------------------------------------------
# cancel / pause / resume / retry
# ---------------------------------------------------------------------------
RUNNING = [*started(), prep()]


@pytest.mark.parametrize("history", [RUNNING, PAUSED, PREP_FAILED], ids=["running", "paused", "failed"])
def test_cancel_is_accepted_while_the_instance_is_live(history: list[Event]) -> None:
    assert when(given(history), CancelWorkflow(reason="no longer needed")) == [
        WorkflowCancelled(reason="no longer needed"),
    ]


def test_pause_stops_a_running_instance() -> None:
    assert when(given(RUNNING), PauseWorkflow(reason="maintenance")) == [WorkflowPaused(reason="maintenance")]


def test_resume_restarts_a_paused_instance() -> None:
    assert when(given(PAUSED), ResumeWorkflow()) == [WorkflowResumed()]


def test_retry_reschedules_the_failed_step() -> None:
    assert when(given(PREP_FAILED), RetryWorkflow()) == [WorkflowRetried(steps=[PREP]), prep(2)]


@pytest.mark.parametrize(
    ("history", "command", "reason"),
    [
        (COMPLETED, CancelWorkflow(), "cannot cancel an instance that is completed"),
        (CANCELLED, CancelWorkflow(), "cannot cancel an instance that is cancelled"),
        (PAUSED, PauseWorkflow(), "cannot pause an instance that is paused"),
        (PREP_FAILED, PauseWorkflow(), "cannot pause an instance that is failed"),
        (COMPLETED, PauseWorkflow(), "cannot pause an instance that is completed"),
        (CANCELLED, PauseWorkflow(), "cannot pause an instance that is cancelled"),
        (RUNNING, ResumeWorkflow(), "cannot resume an instance that is running"),
        (PREP_FAILED, ResumeWorkflow(), "cannot resume an instance that is failed"),
        (CANCELLED, ResumeWorkflow(), "cannot resume an instance that is cancelled"),
        (RUNNING, RetryWorkflow(), "cannot retry an instance that is running"),
        (PAUSED, RetryWorkflow(), "cannot retry an instance that is paused"),
        (COMPLETED, RetryWorkflow(), "cannot retry an instance that is completed"),
        (CANCELLED, RetryWorkflow(), "cannot retry an instance that is cancelled"),
    ],
)
def test_an_invalid_transition_is_rejected_with_one_event(history: list[Event], command: AnyCommand,
                                                          reason: str) -> None:
    envelope = env(command)
    tag = type(command).__struct_config__.tag
    assert decide(given(history), envelope, AGENT, NOW) == [
        CommandRejected(command=tag, reason=reason, command_id=envelope.entry_id),
    ]


def test_a_rejection_names_the_senders_cmd_id() -> None:
    assert when(given(RUNNING), ResumeWorkflow(), cmd_id="k7") == [
        CommandRejected(cmd="k7", command="resume", reason="cannot resume an instance that is running",
                        command_id="k7"),
    ]


def test_a_step_completed_while_paused_dispatches_nothing() -> None:
    assert when(given(PAUSED), complete(PREP)) == [done(PREP)]


def test_resume_dispatches_the_steps_that_became_ready_while_paused() -> None:
    assert when(given(PAUSED, done(PREP)), ResumeWorkflow()) == [WorkflowResumed(), assign()]


def test_resume_completes_a_workflow_whose_last_step_finished_while_paused() -> None:
    history = [*COMPLETED[:-2], WorkflowPaused(), done(RESULTS, output=1)]
    assert when(given(history), ResumeWorkflow()) == [WorkflowResumed(), WorkflowCompleted(output={RESULTS: 1})]


def test_a_retry_timer_while_paused_waits_for_resume_which_dispatches_due_retries_only() -> None:
    definition = bare(svc("a", retry_policy={"max_attempts": 3, "backoff_multiplier": 1000}),
                      svc("b", retry_policy={"max_attempts": 3, "backoff_multiplier": 60_000}))
    history = [*started(definition, {}), call("a"), call("b"),
               StepFailed(step="a", attempt=1, error=BOOM, retry_at=T0 + 1000),
               StepFailed(step="b", attempt=1, error=BOOM, retry_at=T0 + 60_000), WorkflowPaused()]
    assert when(given(history), FireTimer(kind="retry", step="a", attempt=1), definition) == []
    assert when(given(history), ResumeWorkflow(), definition, now=T0 + 2000) == [WorkflowResumed(), call("a", 2)]


def test_a_step_failing_finally_while_paused_fails_the_workflow_on_resume() -> None:
    state = given(PAUSED, StepFailed(step=PREP, attempt=1, error=FATAL))
    assert when(given(PAUSED), fail(PREP, error=FATAL)) == [StepFailed(step=PREP, attempt=1, error=FATAL)]
    assert when(state, ResumeWorkflow()) == [WorkflowResumed(), WorkflowFailed(step=PREP, error=FATAL)]


def test_retry_gives_the_failed_step_a_fresh_attempt_budget() -> None:
    history = [*started(), prep(), StepFailed(step=PREP, attempt=1, error=BOOM, retry_at=T0 + 1000), prep(2),
               StepFailed(step=PREP, attempt=2, error=BOOM, retry_at=T0 + 2000), prep(3),
               StepFailed(step=PREP, attempt=3, error=BOOM), WorkflowFailed(step=PREP, error=BOOM)]
    assert when(given(history), RetryWorkflow()) == [WorkflowRetried(steps=[PREP]), prep(4)]
    history += [WorkflowRetried(steps=[PREP]), prep(4)]
    assert when(given(history), fail(PREP, 4)) == [StepFailed(step=PREP, attempt=4, error=BOOM, retry_at=NOW + 1000)]


def test_retry_gives_the_handler_retries_back_too() -> None:
    state = run(AGENT, complete(PREP), *[c for a in range(1, 7) for c in (
        fail(ASSIGN, a), FireTimer(kind="retry", step=ASSIGN, attempt=a))])
    assert state.status == "failed" and state.step(ASSIGN).attempt == 6
    state = run(AGENT, complete(PREP), *[c for a in range(1, 7) for c in (
        fail(ASSIGN, a), FireTimer(kind="retry", step=ASSIGN, attempt=a))], RetryWorkflow(),
        *[c for a in range(7, 10) for c in (fail(ASSIGN, a), FireTimer(kind="retry", step=ASSIGN, attempt=a))])
    assert when(state, fail(ASSIGN, 10)) == [
        StepFailed(step=ASSIGN, attempt=10, error=BOOM, retry_at=NOW + 60_000, handler_retry=True),
    ]


def test_retry_resumes_a_branch_whose_retry_came_due_while_failed() -> None:
    definition = bare(svc("a"), svc("b", retry_policy={"max_attempts": 2, "backoff_multiplier": 1000}))
    history = [*started(definition, {}), call("a"), call("b"),
               StepFailed(step="b", attempt=1, error=BOOM, retry_at=T0 + 1000),
               StepFailed(step="a", attempt=1, error=FATAL), WorkflowFailed(step="a", error=FATAL)]
    assert when(given(history), FireTimer(kind="retry", step="b", attempt=1), definition) == []
    assert when(given(history), RetryWorkflow(), definition) == [
        WorkflowRetried(steps=["a"]), call("a", 2), call("b", 2),
    ]


# ---------------------------------------------------------------------------
# idempotency and unknown instances
# ---------------------------------------------------------------------------
def test_a_repeated_cmd_id_is_ignored() -> None:
    first = when(given(RUNNING), PauseWorkflow(), cmd_id="k1")
    assert first == [WorkflowPaused(cmd="k1")]
    assert when(given(RUNNING, first), PauseWorkflow(), cmd_id="k1") == []
    assert when(given(RUNNING, first), PauseWorkflow(), cmd_id="k2") == [
        CommandRejected(cmd="k2", command="pause", reason="cannot pause an instance that is paused", command_id="k2"),
    ]


def test_a_repeated_start_with_the_same_cmd_id_is_ignored() -> None:
    first = when(INITIAL, StartWorkflow(workflow=AGENT.name, context=CTX), cmd_id="s1")
    assert when(given(first), StartWorkflow(workflow=AGENT.name, context=CTX), cmd_id="s1") == []


@pytest.mark.parametrize(
    "command",
    [complete(PREP), fail(PREP), agent_event(), FireTimer(kind="retry", step=PREP, attempt=1),
     FireTimer(kind="timeout", step=MONITOR, attempt=1), CancelWorkflow(), PauseWorkflow(), ResumeWorkflow(),
     RetryWorkflow()],
    ids=lambda c: type(c).__struct_config__.tag,
)
def test_commands_for_an_instance_that_does_not_exist_produce_nothing(command: AnyCommand) -> None:
    assert when(INITIAL, command) == []


# ---------------------------------------------------------------------------
# templates and error handlers
# ---------------------------------------------------------------------------
def test_a_template_that_cannot_render_fails_the_step_without_retries() -> None:
    error = StepError(message="cannot render step 'task_preparation': placeholder {task_id} in endpoint "
                              "'/tasks/{task_id}/prepare' resolved to nothing",
                      retryable=False, kind="template")
    context = {"agent_id": "a-1"}
    assert when(INITIAL, StartWorkflow(workflow=AGENT.name, context=context)) == [
        *started(context=context),
        StepFailed(step=PREP, attempt=1, error=error),
        WorkflowFailed(step=PREP, error=error),
    ]


def test_an_event_filter_that_cannot_render_fails_the_wait_and_still_notifies() -> None:
    definition = bare(
        svc("a"),
        {"name": "w", "type": "event_wait", "event_type": "e", "filter": {"k": "${context.k}"}, "depends_on": ["a"],
         "on_failure": {"action": "notify", "target": "ops", "endpoint": "/alerts/{team}"}},
    )
    error = StepError(message="cannot render step 'w': context.k is not set", retryable=False, kind="template")
    history = [*started(definition, {}), call("a")]
    assert when(given(history), complete("a"), definition) == [
        done("a"),
        StepFailed(step="w", attempt=1, error=error),
        NotificationScheduled(
            step="w", attempt=1, task_id=tid("w", 1) + ":notify", queue="ops", endpoint="/alerts/{team}",
            input={"workflow": "t", "instance_id": IID, "step": "w", "attempt": 1,
                   "error": {"message": error.message, "kind": "template", "retryable": False}},
        ),
        WorkflowFailed(step="w", error=error),
    ]


def test_a_continue_handler_lets_the_dependents_run() -> None:
    definition = bare(svc("a"), svc("b", depends_on=["a"]), svc("c", depends_on=["b"]),
                      error_handlers=[{"step": "a", "on_error": {"action": "continue"}}])
    history = [*started(definition, {}), call("a")]
    assert when(given(history), fail("a", error=FATAL), definition) == [
        StepFailed(step="a", attempt=1, error=FATAL, continued=True), call("b"),
    ]


def test_a_continued_sink_still_lets_the_workflow_complete() -> None:
    definition = bare(svc("a"), svc("b", depends_on=["a"], on_failure={"action": "continue"}))
    history = [*started(definition, {}), call("a"), done("a", output=1), call("b")]
    assert when(given(history), fail("b"), definition) == [
        StepFailed(step="b", attempt=1, error=BOOM, continued=True), WorkflowCompleted(output={"b": None}),
    ]


def test_a_continue_handler_also_covers_a_template_failure() -> None:
    definition = bare(svc("a", endpoint="/x/{missing}", on_failure={"action": "continue"}),
                      svc("b", depends_on=["a"]))
    error = StepError(message="cannot render step 'a': placeholder {missing} in endpoint '/x/{missing}' resolved "
                              "to nothing", retryable=False, kind="template")
    # The handler applies to every final failure of the step, as `notify` does for template failures.
    assert when(INITIAL, StartWorkflow(workflow="t"), definition) == [
        *started(definition, {}), StepFailed(step="a", attempt=1, error=error, continued=True), call("b"),
    ]


def test_decide_and_fold_returns_the_folded_state() -> None:
    state = given(WAITING)
    events, after = decide_and_fold(state, env(agent_event()), AGENT, NOW)
    assert after == fold(state, events, NOW)


# ---------------------------------------------------------------------------
# effects.plan
# ---------------------------------------------------------------------------
KEYS = Keys(prefix="ff", partitions=8)
P = 3


def test_plan_sends_a_task_for_each_scheduled_step() -> None:
    events = when(INITIAL, StartWorkflow(workflow=AGENT.name, context=CTX, correlation_id="c-1"))
    fx = plan(INITIAL, events, KEYS, P)
    assert len(fx.tasks) == 1
    key, task_id, step, attempt, data = fx.tasks[0]
    assert (key, task_id, step, attempt) == ("{ff:3}:tasks:planning-system", tid(PREP, 1), PREP, 1)
    assert orjson.loads(data) == {"service": "planning-system", "endpoint": "/tasks/t-1/prepare", "input": {},
                                  "context": CTX, "workflow": AGENT.name, "correlation_id": "c-1",
                                  "idempotency_key": f"ff:{IID}/{PREP}/1"}
    assert (fx.timers_add, fx.timers_rem, fx.sadd, fx.srem) == ([], [], [], [])


def test_plan_arms_a_retry_timer_and_sends_nothing_else() -> None:
    state = given(started(), prep())
    events = [StepFailed(step=PREP, attempt=1, error=BOOM, retry_at=NOW + 1000)]
    fx = plan(state, events, KEYS, P)
    assert fx.timers_add == [(NOW + 1000, timer_member(IID, "retry", PREP, 1))]
    assert (fx.tasks, fx.timers_rem, fx.sadd, fx.srem) == ([], [], [], [])


def test_a_timer_member_names_the_instance_and_the_command() -> None:
    member = timer_member(IID, "retry", PREP, 1)
    assert member.split("\n") == [f"timer:retry:{PREP}:1", "timer", IID, '{"kind":"retry","step":"task_preparation","attempt":1}']


def wait_index() -> str:
    shape = filter_shape({"task_id": "t-1", "agent_id": "a-1"})
    return KEYS.wait_index(P, "agent.task_completed", shape, ["a-1", "t-1"])


def test_plan_registers_a_wait_and_arms_its_timeout() -> None:
    state = given(WAITING[:-1])
    fx = plan(state, [monitor()], KEYS, P)
    assert fx.sadd == [("{ff:3}:waitshapes:agent.task_completed", encode_shape(("agent_id", "task_id"))),
                       (wait_index(), wait_member(IID, MONITOR, 1))]
    assert fx.timers_add == [(NOW + HOUR, timer_member(IID, "timeout", MONITOR, 1))]
    assert (fx.tasks, fx.timers_rem, fx.srem) == ([], [], [])


def test_plan_disarms_the_wait_when_the_event_completes_it() -> None:
    state = given(WAITING)
    events = when(state, agent_event())
    fx = plan(state, events, KEYS, P)
    assert fx.srem == [(wait_index(), wait_member(IID, MONITOR, 1))]
    assert fx.timers_rem == [timer_member(IID, "timeout", MONITOR, 1)]
    assert [t[0] for t in fx.tasks] == ["{ff:3}:tasks:planning-system"]


def test_plan_disarms_the_wait_and_sends_the_notification_on_timeout() -> None:
    state = given(WAITING)
    events = when(state, FireTimer(kind="timeout", step=MONITOR, attempt=1))
    fx = plan(state, events, KEYS, P)
    assert fx.srem == [(wait_index(), wait_member(IID, MONITOR, 1))]
    assert fx.timers_rem == [timer_member(IID, "timeout", MONITOR, 1)]
    assert fx.timers_add == []
    [(key, task_id, step, attempt, data)] = fx.tasks
    assert (key, task_id, step, attempt) == ("{ff:3}:tasks:project-coordinator", tid(MONITOR, 1) + ":notify",
                                             MONITOR, 1)
    decoded = orjson.loads(data)
    assert decoded["kind"] == "notification" and decoded["endpoint"] == "/projects/p-1/notifications"
    assert decoded["context"] == CTX


def test_plan_disarms_a_service_call_timeout_on_completion_and_on_failure() -> None:
    definition = bare(svc("a", timeout="5s", retry_policy={"max_attempts": 2}))
    state = given(started(definition, {}), call("a", timeout_at=T0 + 5000))
    member = timer_member(IID, "timeout", "a", 1)
    assert plan(state, when(state, complete("a"), definition), KEYS, P).timers_rem == [member]
    fx = plan(state, when(state, fail("a"), definition), KEYS, P)
    assert fx.timers_rem == [member]
    assert fx.timers_add == [(NOW + 1000, timer_member(IID, "retry", "a", 1))]


def test_plan_disarms_waits_timeouts_and_retries_on_cancel() -> None:
    definition = bare(
        {"name": "w", "type": "event_wait", "event_type": "e", "filter": {"k": "v"}, "timeout": 1000},
        svc("r", retry_policy={"max_attempts": 2}),
    )
    history = [*started(definition, {}),
               StepWaiting(step="w", attempt=1, event_type="e", filter={"k": "v"}, timeout_at=T0 + 1000),
               call("r"), StepFailed(step="r", attempt=1, error=BOOM, retry_at=T0 + 1000)]
    state = given(history)
    events = when(state, CancelWorkflow(), definition)
    assert events == [WorkflowCancelled()]
    fx = plan(state, events, KEYS, P)
    index = KEYS.wait_index(P, "e", ("k",), ["v"])
    assert fx.srem == [(index, wait_member(IID, "w", 1))]
    assert sorted(fx.timers_rem) == sorted([timer_member(IID, "timeout", "w", 1),
                                            timer_member(IID, "retry", "r", 1)])
    assert (fx.tasks, fx.timers_add, fx.sadd) == ([], [], [])


def test_plan_for_a_stale_command_is_empty() -> None:
    state = given(RETRIED_PREP)
    assert not plan(state, when(state, complete(PREP, 1)), KEYS, P)


def test_a_step_rescheduled_by_a_workflow_retry_is_no_longer_finished() -> None:
    # A retrying step has no finished_ms (evolve clears it); a rescheduled one should not keep the old one either.
    events, state = decide_and_fold(given(PREP_FAILED), env(RetryWorkflow()), AGENT, NOW)
    assert events == [WorkflowRetried(steps=[PREP]), prep(2)]
    assert state.step(PREP).status == "scheduled"
    assert state.step(PREP).finished_ms is None


# ---------------------------------------------------------------------------
# The workflow-level deadline (config.timeout)
# ---------------------------------------------------------------------------
TIMED = parse_definition({
    "apiVersion": "workflow/v1", "kind": "Workflow", "metadata": {"name": "timed", "version": "1"},
    "spec": {"config": {"timeout": "30m"}, "steps": [
        {"name": "a", "type": "service_call", "config": {"service": "svc"}},
    ]},
})
THIRTY_MIN = 30 * 60_000


def test_a_workflow_timeout_arms_a_deadline_at_start() -> None:
    events = when(INITIAL, StartWorkflow(workflow="timed"), TIMED, now=T0)
    assert events[1] == WorkflowStarted(timeout_at=T0 + THIRTY_MIN)
    fx = plan(INITIAL, events, Keys(), 0)
    assert (T0 + THIRTY_MIN, timer_member(IID, "workflow_timeout", "", 0)) in fx.timers_add


def test_the_deadline_fails_a_running_workflow() -> None:
    state = run(TIMED)
    events = when(state, FireTimer(kind="workflow_timeout", step="", attempt=0), TIMED)
    assert events == [WorkflowFailed(error=StepError(message=f"workflow timed out after {THIRTY_MIN} ms",
                                                     retryable=False, kind="timeout"))]


def test_the_deadline_is_disarmed_when_the_workflow_completes() -> None:
    state = run(TIMED)
    events, after = decide_and_fold(state, env(CompleteStep(step="a", attempt=1, output={})), TIMED, NOW)
    assert after.status == "completed"
    assert timer_member(IID, "workflow_timeout", "", 0) in plan(state, events, Keys(), 0).timers_rem
    # a late deadline changes nothing
    assert when(after, FireTimer(kind="workflow_timeout", step="", attempt=0), TIMED) == []


def test_a_retried_run_gets_a_fresh_deadline() -> None:
    state = run(TIMED, FailStep(step="a", attempt=1, error=FATAL))
    assert state.status == "failed"
    events = when(state, RetryWorkflow(), TIMED)
    assert events[0] == WorkflowRetried(steps=["a"], timeout_at=NOW + THIRTY_MIN)
