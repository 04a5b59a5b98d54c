"""Properties of the pure core over random definitions and random command sequences.

A scenario is a random DAG (1-8 steps, service calls and event waits, random
dependencies on earlier steps, retry policies, timeouts and error handlers)
and a random list of moves. A move names a kind and a few numbers; it becomes a
command only when it runs, against the state reached so far, so "complete step
2 at its current attempt" and "... at the attempt before" both exist without
the strategy knowing the state. Moves include stale results, mismatched
events, timers that fire when due or early, control commands, cmd_id reuse and
exact re-deliveries of the previous inbox entry.

Each test replays the scenario through ``decide_and_fold`` (and ``plan``) and
checks one family of properties on the trace.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.decider import decide, decide_and_fold, step_done
from engine.definition import Definition, parse_definition
from engine.effects import plan, timer_member
from engine.evolve import evolve, fold, fold_stored
from engine.keys import Keys
from engine.model import (
    INITIAL,
    STATUS_CANCELLED,
    STATUS_COMPLETED,
    STATUS_CREATED,
    STATUS_FAILED,
    STATUS_NONE,
    STATUS_PAUSED,
    STATUS_RUNNING,
    STEP_FAILED,
    STEP_PENDING,
    STEP_RETRYING,
    STEP_SCHEDULED,
    STEP_WAITING,
    TERMINAL,
    AnyCommand,
    CancelWorkflow,
    CommandRejected,
    CompleteStep,
    DeliverEvent,
    Envelope,
    Event,
    FailStep,
    FireTimer,
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
    WorkflowCompleted,
    WorkflowFailed,
)

SETTINGS = settings(deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])
IID = "i-1"
T0 = 1_000_000
KEYS = Keys(prefix="ff", partitions=4)
P = 1

# ---------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------
# Templates that cannot render are rarer than those that can, so most runs get far.
FILTERS = st.sampled_from([{}, {"k": "${context.k}"}, {"k": "${context.k}"}, {"k": "${context.k}", "z": 1},
                           {"k": "${context.k}", "z": 1}, {"k": "${context.missing}"}])
ENDPOINTS = st.sampled_from([None, None, "/x", "/x/{k}", "/x/{k}", "/x/{missing}"])


@st.composite
def step_docs(draw: st.DrawFn, index: int) -> dict[str, Any]:
    name = f"s{index}"
    earlier = [f"s{j}" for j in range(index)]
    doc: dict[str, Any] = {
        "name": name,
        "depends_on": draw(st.lists(st.sampled_from(earlier), unique=True, max_size=3)) if earlier else [],
        "retry_policy": {
            "max_attempts": draw(st.integers(1, 3)),
            "backoff_base": draw(st.integers(1, 3)),
            "backoff_multiplier": draw(st.integers(0, 2000)),
        },
    }
    if draw(st.booleans()):
        doc.update(type="service_call", service=draw(st.sampled_from(["q1", "q2"])))
        if (endpoint := draw(ENDPOINTS)) is not None:
            doc["endpoint"] = endpoint
    else:
        doc.update(type="event_wait", event_type=draw(st.sampled_from(["e1", "e2"])), filter=draw(FILTERS))
    if draw(st.booleans()):
        doc["timeout"] = draw(st.integers(1, 5000))
    return doc


@st.composite
def handler_docs(draw: st.DrawFn, step: str) -> dict[str, Any] | None:
    action = draw(st.sampled_from([None, None, "retry", "continue", "notify", "terminate"]))
    if action is None:
        return None
    on_error: dict[str, Any] = {"action": action}
    if action == "retry":
        on_error.update(max_retries=draw(st.integers(0, 2)), backoff_ms=draw(st.integers(0, 5000)))
    elif action == "notify":
        on_error.update(target="ops", endpoint=draw(st.sampled_from(["/n", "/n/{k}", "/n/{missing}"])))
    return {"step": step, "on_error": on_error}


@st.composite
def definitions(draw: st.DrawFn) -> Definition:
    n = draw(st.integers(1, 8))
    steps = [draw(step_docs(i)) for i in range(n)]
    handlers = [h for i in range(n) if (h := draw(handler_docs(f"s{i}"))) is not None]
    return parse_definition({"steps": steps, "error_handlers": handlers}, name="prop", version="1")


# Results and timers outnumber control commands, or most runs would end at an early cancel.
MOVE_KINDS = ["complete"] * 6 + ["event"] * 4 + ["fail"] * 2 + ["fire"] * 3 + [
    "start", "timer", "cancel", "pause", "resume", "resume", "retry", "retry", "dup", "dup"]
Move = tuple[str, int, int, int, str | None, int]
moves = st.tuples(
    st.sampled_from(MOVE_KINDS),
    st.integers(0, 9),  # which step or armed timer (below 7: preferably a step that is running now)
    st.sampled_from([0, 0, 0, 0, -1, 1]),  # attempt offset from the step's current attempt
    st.integers(0, 3),  # a variant: task id / retryable / event match / timer kind
    st.sampled_from([None, None, None, None, "c1", "c2", "c3"]),  # the sender's cmd_id
    st.integers(0, 3000),  # ms that pass before the move
)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Definition, dict[str, Any], list[Move]]:
    definition = draw(definitions())
    context = draw(st.sampled_from([{"k": "v"}, {"k": "v"}, {"k": "v"}, {"k": "v", "missing": "here"}, {}]))
    first: Move = ("start", 0, 0, 0, None, 0)
    return definition, context, [first, *draw(st.lists(moves, min_size=5, max_size=50))]


# ---------------------------------------------------------------------------
# Running a scenario
# ---------------------------------------------------------------------------
@dataclass
class Decision:
    before: State
    envelope: Envelope
    now: int
    events: list[Event]
    after: State


@dataclass
class Trace:
    definition: Definition
    decisions: list[Decision] = field(default_factory=list)
    armed: dict[str, int] = field(default_factory=dict)  # timer member -> due ms
    waits: set[tuple[str, str]] = field(default_factory=set)  # (wait index key, member)

    @property
    def final(self) -> State:
        return self.decisions[-1].after if self.decisions else INITIAL

    def stored(self) -> list[tuple[Event, int]]:
        return [(e, d.now) for d in self.decisions for e in d.events]


def command_for(move: Move, state: State, definition: Definition, context: dict[str, Any],
                trace: Trace, now: int) -> tuple[AnyCommand | None, int]:
    kind, which, offset, variant, _, _ = move
    step = definition.steps[which % len(definition.steps)]
    live_status = STEP_WAITING if kind == "event" else STEP_SCHEDULED
    live = [s for s in definition.steps if state.step(s.name).status == live_status]
    if live and which < 7:
        step = live[which % len(live)]
    current = state.step(step.name)
    attempt = current.attempt + offset
    if kind == "start":
        return StartWorkflow(workflow=definition.name, context=context), now
    if kind == "complete":
        task_id = [f"{IID}:{step.name}:{attempt}", None, "elsewhere", current.task_id][variant]
        return CompleteStep(step=step.name, attempt=attempt, task_id=task_id, output={"n": which}), now
    if kind == "fail":
        error = StepError(message="boom", retryable=variant != 0)
        return FailStep(step=step.name, attempt=attempt, error=error, task_id=current.task_id), now
    if kind == "event":
        wait = current.wait
        event_type = wait.event_type if wait is not None else (step.event_type or "e1")
        data: dict[str, Any] = dict(wait.filter) if wait is not None else {"k": "v"}
        if variant == 1:
            data = {**data, "k": "other"}
        elif variant == 2:
            event_type = "unrelated"
        elif variant == 3:
            data["extra"] = True
        return DeliverEvent(step=step.name, attempt=attempt, event_type=event_type, event_id=f"{now}-0",
                            data=data), now
    if kind == "fire":
        if not trace.armed:
            return None, now
        member = sorted(trace.armed)[which % len(trace.armed)]
        due = trace.armed.pop(member)
        data = orjson.loads(member.split("\n")[3])
        return FireTimer(kind=data["kind"], step=data["step"], attempt=data["attempt"]), max(now, due)
    if kind == "timer":
        timer_kind = "retry" if variant < 2 else "timeout"
        trace.armed.pop(timer_member(IID, timer_kind, step.name, attempt), None)
        return FireTimer(kind=timer_kind, step=step.name, attempt=attempt), now
    control: dict[str, AnyCommand] = {"cancel": CancelWorkflow(reason="r"), "pause": PauseWorkflow(),
                                      "resume": ResumeWorkflow(), "retry": RetryWorkflow()}
    return control[kind], now


def simulate(definition: Definition, context: dict[str, Any], moves: list[Move]) -> Trace:
    trace = Trace(definition)
    state, now, last = INITIAL, T0, None
    for n, move in enumerate(moves):
        now += move[5]
        if move[0] == "dup":
            if last is None:
                continue
            envelope = last
        else:
            command, now = command_for(move, state, definition, context, trace, now)
            if command is None:
                continue
            envelope = Envelope(instance_id=IID, entry_id=f"{n}-0", command=command, cmd_id=move[4])
        events, after = decide_and_fold(state, envelope, definition, now)
        fx = plan(state, events, KEYS, P)
        for due, member in fx.timers_add:
            trace.armed[member] = due
        for member in fx.timers_rem:
            trace.armed.pop(member, None)
        trace.waits |= {(k, m) for k, m in fx.sadd if ":wait:" in k}
        trace.waits -= set(fx.srem)
        trace.decisions.append(Decision(state, envelope, now, events, after))
        state, last = after, envelope
    return trace


# ---------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------
@SETTINGS
@given(scenarios())
def test_decide_never_raises_and_agrees_with_its_fold(scenario: Any) -> None:
    trace = simulate(*scenario)
    for d in trace.decisions:
        assert decide(d.before, d.envelope, trace.definition, d.now) == d.events
        assert d.after == fold(d.before, d.events, d.now)


@SETTINGS
@given(scenarios())
def test_folding_one_event_at_a_time_equals_one_batch_fold(scenario: Any) -> None:
    trace = simulate(*scenario)
    stepwise = INITIAL
    for event, ts in trace.stored():
        stepwise = evolve(stepwise, event, ts)
    assert stepwise == fold_stored(INITIAL, trace.stored()) == trace.final
    assert fold(INITIAL, [e for e, _ in trace.stored()]).status == trace.final.status


ALLOWED = {
    (STATUS_NONE, STATUS_CREATED),
    (STATUS_CREATED, STATUS_RUNNING),
    (STATUS_RUNNING, STATUS_PAUSED),
    (STATUS_PAUSED, STATUS_RUNNING),
    (STATUS_RUNNING, STATUS_FAILED),
    (STATUS_FAILED, STATUS_RUNNING),
    (STATUS_CREATED, STATUS_CANCELLED),
    (STATUS_RUNNING, STATUS_CANCELLED),
    (STATUS_PAUSED, STATUS_CANCELLED),
    (STATUS_FAILED, STATUS_CANCELLED),
    (STATUS_RUNNING, STATUS_COMPLETED),
}


@SETTINGS
@given(scenarios())
def test_the_status_follows_the_state_machine_and_terminal_states_stay_put(scenario: Any) -> None:
    trace = simulate(*scenario)
    for d in trace.decisions:
        if d.before.status in TERMINAL:
            assert all(isinstance(e, CommandRejected) for e in d.events), d.events
        if any(isinstance(e, CommandRejected) for e in d.events):
            assert len(d.events) == 1, d.events
            assert d.before.status in d.events[0].reason  # type: ignore[attr-defined]
        s = d.before
        for event in d.events:
            after = evolve(s, event, d.now)
            if after.status != s.status:
                assert (s.status, after.status) in ALLOWED, (s.status, after.status, event)
            s = after


@SETTINGS
@given(scenarios())
def test_versions_count_events(scenario: Any) -> None:
    trace = simulate(*scenario)
    for d in trace.decisions:
        assert d.after.version == d.before.version + len(d.events)
    assert trace.final.version == len(trace.stored())


IDEMPOTENT_BY_STATE = (StartWorkflow, CompleteStep, FailStep, DeliverEvent, FireTimer)


@SETTINGS
@given(scenarios())
def test_applying_an_envelope_twice_adds_nothing_the_second_time(scenario: Any) -> None:
    trace = simulate(*scenario)
    for d in trace.decisions:
        again = decide(d.after, d.envelope, trace.definition, d.now)
        if d.envelope.cmd_id is not None and d.events:
            assert again == [], (d.envelope, d.events)
        if isinstance(d.envelope.command, IDEMPOTENT_BY_STATE):
            assert again == [], (d.envelope, d.events)


@SETTINGS
@given(scenarios())
def test_dispatches_and_results_respect_attempts_and_dependencies(scenario: Any) -> None:
    trace = simulate(*scenario)
    completed: set[tuple[str, int]] = set()
    for d in trace.decisions:
        s = d.before
        for event in d.events:
            if isinstance(event, (StepScheduled, StepWaiting)):
                st = s.step(event.step)
                assert s.status == STATUS_RUNNING, event
                assert st.status in (STEP_PENDING, STEP_RETRYING, STEP_FAILED), (st, event)
                assert event.attempt == st.attempt + 1, (st, event)
                deps = trace.definition.step(event.step).depends_on
                assert all(step_done(s.step(dep)) for dep in deps), event
            if isinstance(event, StepScheduled):
                assert event.task_id == f"{IID}:{event.step}:{event.attempt}"
            if isinstance(event, StepCompleted):
                st = s.step(event.step)
                assert st.status in (STEP_SCHEDULED, STEP_WAITING) and st.attempt == event.attempt, (st, event)
                assert (event.step, event.attempt) not in completed, event
                completed.add((event.step, event.attempt))
            if isinstance(event, StepFailed):
                st = s.step(event.step)
                live = st.status in (STEP_SCHEDULED, STEP_WAITING) and st.attempt == event.attempt
                unrenderable = event.error.kind == "template" and event.attempt == st.attempt + 1
                assert live or unrenderable, (st, event)
                assert event.retry_at is None or event.retry_at >= d.now
            if isinstance(event, (WorkflowFailed, WorkflowCompleted)):
                assert s.status == STATUS_RUNNING, event
            s = evolve(s, event, d.now)


def all_done(state: State, definition: Definition) -> bool:
    return all(step_done(state.step(s.name)) for s in definition.steps)


@SETTINGS
@given(scenarios())
def test_a_workflow_whose_steps_are_all_done_completes_exactly_once(scenario: Any) -> None:
    trace = simulate(*scenario)
    completions = 0
    for d in trace.decisions:
        completions += sum(isinstance(e, WorkflowCompleted) for e in d.events)
        if d.after.status == STATUS_RUNNING:
            assert not all_done(d.after, trace.definition)
        if all_done(d.after, trace.definition):
            assert d.after.status in (STATUS_COMPLETED, STATUS_PAUSED, STATUS_CANCELLED), d.after.status
    assert completions <= 1
    assert completions == (trace.final.status == STATUS_COMPLETED)


@SETTINGS
@given(scenarios())
def test_a_finished_instance_leaves_no_wait_or_timeout_armed(scenario: Any) -> None:
    trace = simulate(*scenario)
    final = trace.final
    if final.status not in TERMINAL:
        return
    assert trace.waits == set()
    now = trace.decisions[-1].now
    for member, due in trace.armed.items():
        # A retry timer may outlive a dispatch that resume or retry made early; it is due, and stale.
        assert member.startswith("timer:retry:") and due <= now, (member, due, now)
