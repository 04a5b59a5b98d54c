"""Properties of the pure core over random definitions and random command sequences.

A scenario is a random DAG (1-8 steps, service calls and event waits, random
dependencies on earlier steps, retry policies, timeouts and error handlers)
and a random list of moves. A move names a kind and a few numbers; it becomes a
command only when it runs, against the state reached so far, so "complete step
2 at its current attempt" and "... at the attempt before" both exist without
the strategy knowing the state. Moves include stale results, mismatched
events, timers that fire when due or early, control commands, cmd_id reuse and
exact re-deliveries of the previous inbox entry.

Language scenarios add conditionals (with edges to later steps), ``condition:``
on any step, loops, validation steps, delays, ``on_timeout`` actions and a
compensation block, and moves that name a loop item or validation rule, fire
delay timers, send signals and retry from a step.

Each test replays the scenario through ``decide_and_fold`` (and ``plan``) and
checks one family of properties on the trace. Every property of the core runs
twice, on core scenarios (``test_*``) and on language scenarios
(``test_language_*``), so a failure says which half of the engine it is in.
Cases that random runs reach too rarely to rely on are pinned with ``@example``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import orjson
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from engine.core.decide import decide, decide_and_fold, step_done
from engine.core.definition import Definition, Step, parse_definition
from engine.core.evolve import evolve, fold, fold_stored
from engine.core.model import (
    INITIAL,
    STATUS_CANCELLED,
    STATUS_COMPENSATED,
    STATUS_COMPENSATING,
    STATUS_COMPLETED,
    STATUS_CREATED,
    STATUS_FAILED,
    STATUS_NONE,
    STATUS_PAUSED,
    STATUS_RUNNING,
    STEP_CHILD,
    STEP_COMPLETED,
    STEP_DELAYED,
    STEP_FAILED,
    STEP_PENDING,
    STEP_RETRYING,
    STEP_SCHEDULED,
    STEP_SKIPPED,
    STEP_WAITING,
    TERMINAL,
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
    PauseWorkflow,
    ResumeWorkflow,
    RetryWorkflow,
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
    StepState,
    StepWaiting,
    WorkflowCompensated,
    WorkflowCompleted,
    WorkflowFailed,
    WorkflowRetried,
)
from engine.store.keys import Keys
from engine.store.plan import plan, timer_member

# FOLDFLOW_PROPERTY_EXAMPLES raises the count for a longer hunt than CI's (the default).
SETTINGS = settings(deadline=None, max_examples=int(os.environ.get("FOLDFLOW_PROPERTY_EXAMPLES", "100")),
                    suppress_health_check=[HealthCheck.too_slow])
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
CONDITIONS = st.sampled_from(["input.k == 'v'", "steps.s0.output.n > 3", "signals.go", "not signals.go", "true",
                              "len(input.items) > 1", "steps.s0.completed"])
ITEMS = st.sampled_from(["{{ input.items }}", "{{ input.items }}", "{{ input.items }}", "{{ steps.s0.output.list }}",
                         "{{ input.k }}"])  # the last is not a list
LANGUAGE_TYPES = st.sampled_from(["service_call", "service_call", "event_wait", "conditional", "loop", "loop",
                                  "validation", "delay"])


def _retry_policy(draw: st.DrawFn) -> dict[str, Any]:
    return {"max_attempts": draw(st.integers(1, 3)), "backoff_base": draw(st.integers(1, 3)),
            "backoff_multiplier": draw(st.integers(0, 2000))}


@st.composite
def step_docs(draw: st.DrawFn, index: int, kind: str | None = None) -> dict[str, Any]:
    """One step; ``kind`` None is the core mix (service calls and event waits only)."""
    name = f"s{index}"
    earlier = [f"s{j}" for j in range(index)]
    doc: dict[str, Any] = {
        "name": name,
        "depends_on": draw(st.lists(st.sampled_from(earlier), unique=True, max_size=3)) if earlier else [],
        "retry_policy": _retry_policy(draw),
    }
    if kind is None:
        kind = "service_call" if draw(st.booleans()) else "event_wait"
    if kind == "service_call":
        doc.update(type="service_call", service=draw(st.sampled_from(["q1", "q2"])))
        if (endpoint := draw(ENDPOINTS)) is not None:
            doc["endpoint"] = endpoint
    elif kind == "event_wait":
        doc.update(type="event_wait", event_type=draw(st.sampled_from(["e1", "e2"])), filter=draw(FILTERS))
    elif kind == "conditional":
        doc.update(type="conditional", condition=draw(CONDITIONS))  # edges are drawn with the whole definition
    elif kind == "loop":
        doc.update(type="loop", service="q1", items=draw(ITEMS), max_iterations=draw(st.integers(1, 4)))
        if draw(st.booleans()):
            doc["input"] = {"x": "{{ item }}", "i": "{{ index }}"}
    elif kind == "validation":
        fields = draw(st.lists(st.sampled_from(["k", "items", "missing"]), min_size=1, max_size=3))
        doc.update(type="validation", validation_rules=[
            {"field": f, "rule": f"r{m}", "service": "q2"} for m, f in enumerate(fields)])
    elif kind == "delay":
        doc.update(type="delay", duration=draw(st.integers(0, 3000)))
    if kind in ("service_call", "event_wait", "loop", "validation") and draw(st.booleans()):
        doc["timeout"] = draw(st.integers(1, 5000))
    return doc


@st.composite
def handler_docs(draw: st.DrawFn, step: str, compensation: bool = False) -> dict[str, Any] | None:
    actions = [None, None, "retry", "continue", "notify", "terminate"] + (["compensate"] if compensation else [])
    action = draw(st.sampled_from(actions))
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


def _run_after_s0(doc: dict[str, Any], index: int) -> None:
    """Registration refuses a step reading a step that may not have run yet, so one that reads s0 follows it."""
    reads = [key for key in ("condition", "items") if "steps.s0." in str(doc.get(key, ""))]
    if reads and index == 0:
        for key in reads:
            doc[key] = "true" if key == "condition" else "{{ input.items }}"
    elif reads and "s0" not in doc["depends_on"]:
        doc["depends_on"] = [*doc["depends_on"], "s0"]


@st.composite
def language_definitions(draw: st.DrawFn) -> Definition:
    n = draw(st.integers(1, 8))
    steps = [draw(step_docs(i, draw(LANGUAGE_TYPES))) for i in range(n)]
    compensation = draw(st.booleans())
    taken: set[str] = set()  # a step is the edge of one conditional at most
    for i, doc in enumerate(steps):
        if doc["type"] == "conditional":
            for key in ("true_edge", "false_edge"):
                later = [f"s{j}" for j in range(i + 1, n) if f"s{j}" not in taken]
                target = draw(st.sampled_from([None, *later]))
                if target is not None:
                    doc[key] = target
                    taken.add(target)
        elif draw(st.integers(0, 4)) == 0:
            doc["condition"] = draw(CONDITIONS)
        if doc["type"] == "event_wait" and "timeout" in doc and draw(st.booleans()):
            actions = ["fail", "continue", "notify"] + (["compensate"] if compensation else [])
            action = draw(st.sampled_from(actions))
            doc["on_timeout"] = {"action": action, **({"target": "ops"} if action == "notify" else {})}
        _run_after_s0(doc, i)
    handlers = [h for i in range(n) if (h := draw(handler_docs(f"s{i}", compensation))) is not None]
    document: dict[str, Any] = {"steps": steps, "error_handlers": handlers}
    if compensation:
        undo = []
        for m in range(draw(st.integers(1, 3))):
            doc = {"name": f"c{m}", "type": "service_call", "service": "q1", "retry_policy": _retry_policy(draw)}
            if draw(st.booleans()):
                doc["compensates"] = f"s{draw(st.integers(0, n - 1))}"
            if draw(st.integers(0, 3)) == 0:
                doc["condition"] = draw(CONDITIONS)
            undo.append(doc)
        document["compensation"] = {"steps": undo}
    return parse_definition(document, name="prop", version="1")


# Results and timers outnumber control commands, or most runs would end at an early cancel.
MOVE_KINDS = ["complete"] * 6 + ["event"] * 4 + ["fail"] * 2 + ["fire"] * 3 + [
    "start", "timer", "cancel", "pause", "resume", "resume", "retry", "retry", "dup", "dup"]
LANGUAGE_MOVE_KINDS = MOVE_KINDS + ["complete"] * 4 + ["fire"] * 2 + ["pause", "signal", "signal", "retry_from"]
Move = tuple[str, int, int, int, str | None, int, int]


def move_strategy(kinds: list[str]) -> st.SearchStrategy[Move]:
    return st.tuples(
        st.sampled_from(kinds),
        st.integers(0, 9),  # which step or armed timer (below 7: preferably a step that is running now)
        st.sampled_from([0, 0, 0, 0, -1, 1]),  # attempt offset from the step's current attempt
        st.integers(0, 3),  # a variant: task id / retryable / event match / timer kind
        st.sampled_from([None, None, None, None, "c1", "c2", "c3"]),  # the sender's cmd_id
        st.integers(0, 3000),  # ms that pass before the move
        st.sampled_from([0, 0, 0, 0, 1, 2]),  # which part: the current item or an open rule / the next / none
    )


moves = move_strategy(MOVE_KINDS)
language_moves = move_strategy(LANGUAGE_MOVE_KINDS)
START: Move = ("start", 0, 0, 0, None, 0, 0)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Definition, dict[str, Any], list[Move]]:
    definition = draw(definitions())
    context = draw(st.sampled_from([{"k": "v"}, {"k": "v"}, {"k": "v"}, {"k": "v", "missing": "here"}, {}]))
    return definition, context, [START, *draw(st.lists(moves, min_size=5, max_size=50))]


@st.composite
def language_scenarios(draw: st.DrawFn) -> tuple[Definition, dict[str, Any], list[Move]]:
    definition = draw(language_definitions())
    context: dict[str, Any] = draw(st.sampled_from([{"k": "v"}, {"k": "v"}, {"k": "w"}, {}]))
    if draw(st.integers(0, 5)):
        context = {**context, "items": draw(st.lists(st.integers(0, 9), max_size=5))}
    return definition, context, [START, *draw(st.lists(language_moves, min_size=5, max_size=60))]


def mv(kind: str, which: int = 0, offset: int = 0, variant: int = 0, ms: int = 0, part: int = 0) -> Move:
    return (kind, which, offset, variant, None, ms, part)


def pinned(steps: list[dict[str, Any]], moves_: list[Move], context: dict[str, Any] | None = None,
           **extra: Any) -> tuple[Definition, dict[str, Any], list[Move]]:
    """A language scenario written out, for a case random runs reach too rarely to rely on."""
    definition = parse_definition({"steps": steps, **extra}, name="prop", version="1")
    return definition, {"k": "v"} if context is None else context, [START, *moves_]


_UNDO = {"steps": [{"name": "c0", "type": "service_call", "service": "q1"}]}
_LOOP = {"name": "s0", "type": "loop", "service": "q1", "items": "{{ input.items }}"}
# A loop item finished while paused starts the next item.
PAUSED_LOOP = pinned([_LOOP], [mv("pause"), mv("complete")], {"items": [1, 2]})
# A loop item finished after another branch failed the instance starts the next item.
FAILED_LOOP = pinned([_LOOP, {"name": "s1", "type": "service_call", "service": "q1"}],
                     [mv("fail", which=1), mv("complete")], {"items": [1, 2]})
# A main step's retry timer fires during compensation and dispatches the step.
RETRY_WHILE_COMPENSATING = pinned(
    [{"name": "s0", "type": "service_call", "service": "q1"},
     {"name": "s1", "type": "service_call", "service": "q1", "retry_policy": {"max_attempts": 3}}],
    [mv("fail", which=1, variant=1), mv("fail", which=0), mv("timer", which=7)], compensation=_UNDO)
# A rewound conditional completes at attempt 1 a second time.
REWOUND_CONDITIONAL = pinned(
    [{"name": "s0", "type": "service_call", "service": "q1"},
     {"name": "s1", "type": "conditional", "depends_on": ["s0"], "condition": "true"},
     {"name": "s2", "type": "service_call", "service": "q1", "depends_on": ["s1"]}],
    [mv("complete"), mv("fail"), mv("retry_from", which=1, variant=1)])
# A loop item's payload that cannot render raises out of decide.
UNRENDERABLE_ITEM = pinned([{**_LOOP, "input": {"x": "{{ item.a }}"}}], [mv("complete")],
                           {"items": [{"a": 1}, {}]})
# Compensation ends while an event wait (and its timeout) and a delay are still armed.
COMPENSATED_WITH_WAIT = pinned(
    [{"name": "s0", "type": "service_call", "service": "q1"},
     {"name": "s1", "type": "event_wait", "event_type": "e1", "timeout": 5000},
     {"name": "s2", "type": "delay", "duration": 3000}],
    [mv("fail"), mv("complete")], compensation=_UNDO)
# A step with a `compensate` handler fails finally while the instance is paused.
COMPENSATE_WHILE_PAUSED = pinned(
    [{"name": "s0", "type": "service_call", "service": "q1", "on_failure": {"action": "compensate"}}],
    [mv("pause"), mv("fail")], compensation=_UNDO)
# ... or after the instance failed through a `terminate` handler.
COMPENSATE_AFTER_FAILED = pinned(
    [{"name": "s0", "type": "service_call", "service": "q1", "on_failure": {"action": "terminate"}},
     {"name": "s1", "type": "service_call", "service": "q1", "on_failure": {"action": "compensate"}}],
    [mv("fail"), mv("fail")], compensation=_UNDO)


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


def part_for(step: Step, current: StepState, which: int, part: int) -> int | None:
    """The loop item or validation rule a result names: the one running now, the next one, or none."""
    if step.type == "loop":
        return [current.iteration, current.iteration + 1, None][part]
    if step.type == "validation":
        rules = len(step.validation_rules)
        open_ = [i for i in range(rules) if i >= len(current.results) or current.results[i] is None]
        return [open_[which % len(open_)] if open_ else 0, rules, None][part]
    return None if part < 2 else 0


def command_for(move: Move, state: State, definition: Definition, context: dict[str, Any],
                trace: Trace, now: int) -> tuple[AnyCommand | None, int]:
    kind, which, offset, variant, _, _, part = move
    every = definition.steps + definition.compensation
    step = every[which % len(every)]
    live_status = STEP_WAITING if kind == "event" else STEP_SCHEDULED
    live = [s for s in every if state.step(s.name).status == live_status]
    if live and which < 7:
        step = live[which % len(live)]
    current = state.step(step.name)
    attempt = current.attempt + offset
    if kind == "start":
        return StartWorkflow(workflow=definition.name, context=context), now
    if kind == "complete":
        iteration = part_for(step, current, which, part)
        own = f"{IID}:{step.name}:{attempt}" + ("" if iteration is None else f":{iteration}")
        task_id = [own, None, "elsewhere", current.task_id][variant]
        output = {"n": which, "list": list(range(which % 4)), "valid": which % 5 != 4}
        return CompleteStep(step=step.name, attempt=attempt, task_id=task_id, output=output,
                            iteration=iteration), now
    if kind == "fail":
        error = StepError(message="boom", retryable=variant != 0)
        return FailStep(step=step.name, attempt=attempt, error=error, task_id=current.task_id,
                        iteration=part_for(step, current, which, part)), now
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
        timer_kind = ["retry", "retry", "timeout", "delay" if step.type == "delay" else "timeout"][variant]
        trace.armed.pop(timer_member(IID, timer_kind, step.name, attempt), None)
        return FireTimer(kind=timer_kind, step=step.name, attempt=attempt), now
    if kind == "signal":
        return SignalWorkflow(name="go", payload=variant % 2 == 1), now
    if kind == "retry_from":
        edited = {"edited": which} if variant % 2 == 0 else None
        if variant == 3:
            return RetryWorkflow(input={"edited": which}), now
        target = "nope" if which == 9 else definition.steps[which % len(definition.steps)].name
        return RetryWorkflow(from_step=target, input=edited), now
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
# Properties: each a check on a trace, run on core and on language scenarios
# ---------------------------------------------------------------------------
def check_decide_agrees_with_fold(trace: Trace) -> None:
    for d in trace.decisions:
        assert decide(d.before, d.envelope, trace.definition, d.now) == d.events
        assert d.after == fold(d.before, d.events, d.now)


@SETTINGS
@given(scenarios())
def test_decide_never_raises_and_agrees_with_its_fold(scenario: Any) -> None:
    check_decide_agrees_with_fold(simulate(*scenario))


@SETTINGS
@given(language_scenarios())
@example(UNRENDERABLE_ITEM)
def test_language_decide_never_raises_and_agrees_with_its_fold(scenario: Any) -> None:
    check_decide_agrees_with_fold(simulate(*scenario))


def check_stepwise_fold(trace: Trace) -> None:
    stepwise = INITIAL
    for event, ts in trace.stored():
        stepwise = evolve(stepwise, event, ts)
    assert stepwise == fold_stored(INITIAL, trace.stored()) == trace.final
    assert fold(INITIAL, [e for e, _ in trace.stored()]).status == trace.final.status


@SETTINGS
@given(scenarios())
def test_folding_one_event_at_a_time_equals_one_batch_fold(scenario: Any) -> None:
    check_stepwise_fold(simulate(*scenario))


@SETTINGS
@given(language_scenarios())
def test_language_folding_one_event_at_a_time_equals_one_batch_fold(scenario: Any) -> None:
    check_stepwise_fold(simulate(*scenario))


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
    # saga compensation: a running instance whose step failed for good undoes what it did
    (STATUS_RUNNING, STATUS_COMPENSATING),
    (STATUS_COMPENSATING, STATUS_COMPENSATED),
    (STATUS_COMPENSATING, STATUS_FAILED),
    (STATUS_COMPENSATING, STATUS_CANCELLED),
}


# A malformed retry --from-step is refused for what it says, whatever the status.
RETRY_REFUSALS = ("cannot retry from ", "retry --input needs --from-step")


def check_state_machine(trace: Trace) -> None:
    for d in trace.decisions:
        if d.before.status in TERMINAL:
            assert all(isinstance(e, CommandRejected) for e in d.events), d.events
        if any(isinstance(e, CommandRejected) for e in d.events):
            assert len(d.events) == 1, d.events
            reason = d.events[0].reason  # type: ignore[attr-defined]
            assert d.before.status in reason or reason.startswith(RETRY_REFUSALS), reason
        s = d.before
        for event in d.events:
            after = evolve(s, event, d.now)
            if after.status != s.status:
                assert (s.status, after.status) in ALLOWED, (s.status, after.status, event)
            s = after


@SETTINGS
@given(scenarios())
def test_the_status_follows_the_state_machine_and_terminal_states_stay_put(scenario: Any) -> None:
    check_state_machine(simulate(*scenario))


@SETTINGS
@given(language_scenarios())
@example(COMPENSATE_WHILE_PAUSED)
@example(COMPENSATE_AFTER_FAILED)
def test_language_the_status_follows_the_state_machine_and_terminal_states_stay_put(scenario: Any) -> None:
    check_state_machine(simulate(*scenario))


def check_versions(trace: Trace) -> None:
    for d in trace.decisions:
        assert d.after.version == d.before.version + len(d.events)
    assert trace.final.version == len(trace.stored())


@SETTINGS
@given(scenarios())
def test_versions_count_events(scenario: Any) -> None:
    check_versions(simulate(*scenario))


@SETTINGS
@given(language_scenarios())
def test_language_versions_count_events(scenario: Any) -> None:
    check_versions(simulate(*scenario))


IDEMPOTENT_BY_STATE = (StartWorkflow, CompleteStep, FailStep, DeliverEvent, FireTimer)


def check_idempotent(trace: Trace) -> None:
    for d in trace.decisions:
        again = decide(d.after, d.envelope, trace.definition, d.now)
        if d.envelope.cmd_id is not None and d.events:
            assert again == [], (d.envelope, d.events)
        if isinstance(d.envelope.command, IDEMPOTENT_BY_STATE):
            assert again == [], (d.envelope, d.events)


@SETTINGS
@given(scenarios())
def test_applying_an_envelope_twice_adds_nothing_the_second_time(scenario: Any) -> None:
    check_idempotent(simulate(*scenario))


@SETTINGS
@given(language_scenarios())
def test_language_applying_an_envelope_twice_adds_nothing_the_second_time(scenario: Any) -> None:
    check_idempotent(simulate(*scenario))


DISPATCHES = (StepScheduled, StepWaiting, StepDelayed, ChildStarted)
Dispatch = StepScheduled | StepWaiting | StepDelayed | ChildStarted
IN_FLIGHT = (STEP_SCHEDULED, STEP_WAITING, STEP_DELAYED, STEP_CHILD)


def next_part(definition: Definition, st_: StepState, event: Dispatch) -> bool:
    """A loop's next item (a new attempt) or a validation step's next rule (the same attempt)."""
    step = definition.step(event.step)
    iteration = event.iteration if isinstance(event, StepScheduled) else None
    if st_.status != STEP_SCHEDULED or iteration is None:
        return False
    if step.type == "loop":
        return iteration == st_.iteration + 1 and event.attempt == st_.attempt + 1
    return step.type == "validation" and iteration > 0 and event.attempt == st_.attempt


def check_dispatches(trace: Trace) -> None:
    definition = trace.definition
    undo = definition.compensation_steps()
    completed: set[tuple[str, int]] = set()
    for d in trace.decisions:
        s = d.before
        for event in d.events:
            if isinstance(event, DISPATCHES):
                st_ = s.step(event.step)
                # Main steps start only while running; compensation steps only while compensating.
                assert s.status == (STATUS_COMPENSATING if event.step in undo else STATUS_RUNNING), (s.status, event)
                fresh = st_.status in (STEP_PENDING, STEP_RETRYING, STEP_FAILED) and event.attempt == st_.attempt + 1
                assert fresh or next_part(definition, st_, event), (st_, event)
                deps = definition.step(event.step).depends_on
                assert all(step_done(s.step(dep)) for dep in deps), event
            if isinstance(event, StepScheduled):
                base = f"{IID}:{event.step}:{event.attempt}"
                assert event.task_id == (base if event.iteration is None else f"{base}:{event.iteration}")
            if isinstance(event, StepCompleted):
                st_ = s.step(event.step)
                live = st_.status in IN_FLIGHT and st_.attempt == event.attempt
                # A conditional, or a loop over no items, completes as it is dispatched.
                instant = definition.step(event.step).type in ("conditional", "loop") and st_.status in (
                    STEP_PENDING, STEP_RETRYING, STEP_FAILED) and event.attempt == st_.attempt + 1
                assert live or instant, (st_, event)
                assert (event.step, event.attempt) not in completed, event
                completed.add((event.step, event.attempt))
            if isinstance(event, StepFailed):
                st_ = s.step(event.step)
                live = st_.status in IN_FLIGHT and st_.attempt == event.attempt
                unrenderable = event.error.kind == "template" and event.attempt == st_.attempt + 1
                assert live or unrenderable, (st_, event)
                assert event.retry_at is None or event.retry_at >= d.now
            if isinstance(event, WorkflowCompleted):
                assert s.status == STATUS_RUNNING, event
            if isinstance(event, WorkflowFailed):
                assert s.status in (STATUS_RUNNING, STATUS_COMPENSATING), event
            if isinstance(event, WorkflowCompensated):
                assert s.status == STATUS_COMPENSATING, event
            s = evolve(s, event, d.now)


@SETTINGS
@given(scenarios())
def test_dispatches_and_results_respect_attempts_and_dependencies(scenario: Any) -> None:
    check_dispatches(simulate(*scenario))


@SETTINGS
@given(language_scenarios())
@example(PAUSED_LOOP)
@example(FAILED_LOOP)
@example(RETRY_WHILE_COMPENSATING)
@example(REWOUND_CONDITIONAL)
def test_language_dispatches_and_results_respect_attempts_and_dependencies(scenario: Any) -> None:
    check_dispatches(simulate(*scenario))


def all_done(state: State, definition: Definition) -> bool:
    return all(step_done(state.step(s.name)) for s in definition.steps)


def check_completes_once(trace: Trace) -> None:
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
def test_a_workflow_whose_steps_are_all_done_completes_exactly_once(scenario: Any) -> None:
    check_completes_once(simulate(*scenario))


@SETTINGS
@given(language_scenarios())
def test_language_a_workflow_whose_steps_are_all_done_completes_exactly_once(scenario: Any) -> None:
    check_completes_once(simulate(*scenario))


def check_nothing_left_armed(trace: Trace) -> None:
    final = trace.final
    if final.status not in TERMINAL:
        return
    assert trace.waits == set()
    now = trace.decisions[-1].now
    for member, due in trace.armed.items():
        # A retry timer may outlive a dispatch that resume or retry made early; it is due, and stale.
        assert member.startswith("timer:retry:") and due <= now, (member, due, now)


@SETTINGS
@given(scenarios())
def test_a_finished_instance_leaves_no_wait_or_timeout_armed(scenario: Any) -> None:
    check_nothing_left_armed(simulate(*scenario))


@SETTINGS
@given(language_scenarios())
@example(COMPENSATED_WITH_WAIT)
def test_language_a_finished_instance_leaves_no_wait_or_timeout_armed(scenario: Any) -> None:
    check_nothing_left_armed(simulate(*scenario))


# ---------------------------------------------------------------------------
# Properties of the language constructs
# ---------------------------------------------------------------------------
@SETTINGS
@given(language_scenarios())
def test_no_step_is_both_skipped_and_completed(scenario: Any) -> None:
    trace = simulate(*scenario)
    outcome: dict[str, str] = {}  # step -> "skipped" | "completed", since it last (re)started
    for event, _ in trace.stored():
        if isinstance(event, WorkflowRetried):
            for name in event.steps:
                outcome.pop(name, None)
        elif isinstance(event, (StepSkipped, StepCompleted)):
            what = "skipped" if isinstance(event, StepSkipped) else "completed"
            assert outcome.get(event.step) is None, (event.step, outcome.get(event.step), what)
            outcome[event.step] = what


@SETTINGS
@given(language_scenarios())
def test_compensation_runs_each_step_at_most_once_one_at_a_time_in_order(scenario: Any) -> None:
    trace = simulate(*scenario)
    undo = trace.definition.compensation_steps()
    order: list[str] = []
    started: dict[str, int] = {}  # compensation step -> how often it started from pending, this compensation
    finished: dict[str, int] = {}
    for d in trace.decisions:
        s = d.before
        for event in d.events:
            if isinstance(event, CompensationStarted):
                order, started, finished = list(event.steps), {}, {}
                assert set(order) <= undo and len(set(order)) == len(order), event
            elif isinstance(event, StepScheduled) and event.step in undo and s.step(event.step).status == STEP_PENDING:
                started[event.step] = started.get(event.step, 0) + 1
                position = order.index(event.step)
                assert all(step_done(s.step(before)) for before in order[:position]), (event, order)
            elif isinstance(event, (StepCompleted, StepSkipped)) and event.step in undo:
                finished[event.step] = finished.get(event.step, 0) + 1
            elif isinstance(event, WorkflowCompensated):
                assert all(step_done(s.step(name)) for name in order), (order, s.steps)
                assert all(finished.get(name) == 1 for name in order), (order, finished)
            s = evolve(s, event, d.now)
        assert all(n <= 1 for n in started.values()), started
        assert all(n <= 1 for n in finished.values()), finished
    if trace.final.status == STATUS_COMPENSATED:
        assert all(trace.final.step(name).status in (STEP_COMPLETED, STEP_SKIPPED) for name in order)


@SETTINGS
@given(language_scenarios())
def test_every_loop_completes_with_exactly_one_result_per_item_in_order(scenario: Any) -> None:
    trace = simulate(*scenario)
    loops = {s.name for s in trace.definition.steps if s.type == "loop"}
    collected: dict[str, dict[int, Any]] = {}
    for d in trace.decisions:
        s = d.before
        for event in d.events:
            if isinstance(event, StepScheduled) and event.items is not None:
                collected[event.step] = {}
            elif isinstance(event, StepIterationCompleted) and event.step in loops:
                assert event.iteration not in collected[event.step], event  # each item once
                assert event.iteration == len(collected[event.step]), event  # and in order
                collected[event.step][event.iteration] = event.output
            elif isinstance(event, StepCompleted) and event.step in loops:
                items = s.step(event.step).items if s.step(event.step).status == STEP_SCHEDULED else []
                got = collected.pop(event.step, {})
                assert items is not None and len(got) == len(items), (event, items, got)
                assert event.output == {"items": [got[i] for i in range(len(items))]}, (event, got)
            s = evolve(s, event, d.now)
