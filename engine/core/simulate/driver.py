"""The test run's loop: the real decide and evolve, with the worker's effects
played in memory. A task is answered from the mocks, a child workflow's outcome
too; timers go on the simulated clock; events and signals arrive when the mocks
say. Which events reach which wait follows the router and the catch-up
(streams.md, "External events"): type and filter match, an event published
after the instance started counts even when the wait began later, and no two
waits of the instance take the same event.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from engine.core.decide import decide_and_fold, matches
from engine.core.definition import Definition, Step
from engine.core.ids import entry_key, wait_signature
from engine.core.model import (
    INITIAL,
    STATUS_CANCELLED,
    STATUS_COMPENSATED,
    STATUS_COMPLETED,
    STATUS_FAILED,
    STATUS_PAUSED,
    STATUS_RUNNING,
    STEP_CHILD,
    STEP_DELAYED,
    STEP_RETRYING,
    STEP_SCHEDULED,
    STEP_WAITING,
    AnyCommand,
    ChildStarted,
    CompleteStep,
    DeliverEvent,
    Envelope,
    Event,
    FailStep,
    FireTimer,
    SignalWorkflow,
    StartWorkflow,
    State,
    StepCompleted,
    StepDelayed,
    StepError,
    StepScheduled,
    StepWaiting,
)
from engine.core.simulate.clock import Clock, TimerKey
from engine.core.simulate.mocks import Answer, Arrival, Mocks

FINAL: Final = frozenset({STATUS_COMPLETED, STATUS_FAILED, STATUS_CANCELLED, STATUS_COMPENSATED})
DEFAULT_OUTPUT: Final[dict[str, Any]] = {}  # what an unmocked step answers (mocks.strict: it fails instead)
_RETRYABLE_STATUS: Final = frozenset({408, 425, 429})  # and 5xx, as the HTTP executor reads a status


class Deliver(msgspec.Struct, frozen=True):
    command: AnyCommand


class Publish(msgspec.Struct, frozen=True):
    arrival: Arrival


class Used(msgspec.Struct, frozen=True, kw_only=True):
    """Which mock answered one task: its index in the step's list, or None for the default."""

    step: str
    attempt: int
    iteration: int | None
    answer: int | None


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    max_events: int = 100_000
    max_span_ms: int = 366 * 86_400_000  # a year and a day of simulated time
    # Work units per allowed event. A decision costs its events, a few units per step the
    # instance has (each decision walks them), and for each loop the items it has done (the
    # engine copies and scans them on every item, so n items cost about n*n/2): the limit
    # bounds CPU, not only the history's length (about 0.5 us a unit).
    work_per_event: int = 100

    @property
    def max_work(self) -> int:
        return self.max_events * self.work_per_event


class Outcome(msgspec.Struct, kw_only=True):
    state: State
    history: list[tuple[Event, int]]
    used: list[Used]
    status: str  # the instance's final status, "stalled" or "aborted"
    reason: str | None = None  # why it stalled or was aborted
    events: list[tuple[str, Arrival, int]] = []  # every event published: (entry id, event, ms)


class Driver:
    def __init__(self, definition: Definition, mocks: Mocks, limits: Limits, start_ms: int,
                 instance_id: str) -> None:
        self.definition, self.mocks, self.limits = definition, mocks, limits
        self.clock = Clock(start_ms)
        self.iid = instance_id
        self.state = INITIAL
        self.history: list[tuple[Event, int]] = []
        self.used: list[Used] = []
        self.sent: dict[str, int] = {}  # tasks sent per step: the next answer's index
        self.delays: dict[str, int] = {}  # a delayed step's due time (StepDelayed.until)
        self.published: list[tuple[str, Arrival, int]] = []
        self.completed: set[str] = set()
        self.event_ids: set[str] = set()
        self.loops = tuple(s.name for s in definition.steps + definition.compensation if s.type == "loop")
        self.work = 0
        self._entries = 0

    # -- the loop ----------------------------------------------------------------
    def run(self, context: dict[str, Any], correlation_id: str | None) -> Outcome:
        for arrival in self.mocks.arrivals:
            if arrival.at_ms is not None:
                self.clock.at(self.clock.start + arrival.at_ms, Publish(arrival))
        self.decide(StartWorkflow(workflow=self.definition.name, version=self.definition.version,
                                  context=context, correlation_id=correlation_id))
        while self.state.status not in FINAL:
            if len(self.history) >= self.limits.max_events:
                return self.outcome("aborted", f"the run reached {self.limits.max_events} events without ending "
                                               "(a definition that never finishes?)")
            if self.work > self.limits.max_work:
                return self.outcome("aborted", f"the run used its work limit after {len(self.history)} events "
                                               f"(max_events x {self.limits.work_per_event}; a loop's items cost "
                                               "more as it grows): test with fewer items")
            due = self.clock.peek()
            if due is None:
                return self.outcome("stalled", self.stall_reason())
            if due - self.clock.start > self.limits.max_span_ms:
                return self.outcome("aborted", f"the next thing to happen is {due - self.clock.start} ms after "
                                               f"the start, past the limit of {self.limits.max_span_ms} ms")
            self.take(self.clock.pop())
        return self.outcome(self.state.status)

    def take(self, item: Any) -> None:
        if isinstance(item, Deliver):
            self.decide(item.command)
        elif isinstance(item, Publish):
            self.publish(item.arrival)
        else:
            kind, step, attempt = item
            self.decide(FireTimer(kind=kind, step=step, attempt=attempt))

    def decide(self, command: AnyCommand) -> None:
        self._entries += 1
        envelope = Envelope(instance_id=self.iid, entry_id=f"{self.clock.now}-{self._entries}", command=command)
        events, self.state = decide_and_fold(self.state, envelope, self.definition, self.clock.now)
        self.work += 1 + len(events) + 4 * len(self.state.steps) \
            + sum(len(self.state.step(name).done) for name in self.loops)
        for event in events:
            self.history.append((event, self.clock.now))
            self.effect(event)
        self.rearm()

    # -- effects (what engine/store/plan.py derives, played in memory) ------------------
    def effect(self, event: Event) -> None:
        if isinstance(event, StepScheduled):
            self.answer(event.step, event.attempt, event.task_id, event.iteration)
        elif isinstance(event, ChildStarted):
            self.answer(event.step, event.attempt, event.child_id, None)
        elif isinstance(event, StepWaiting):
            self.catch_up(event)
        elif isinstance(event, StepDelayed):
            self.delays[event.step] = event.until
        elif isinstance(event, StepCompleted) and event.step not in self.completed:
            self.completed.add(event.step)  # after_step arrivals come once, at the step's first completion
            for arrival in self.mocks.arrivals:
                if arrival.after_step == event.step:
                    self.clock.at(self.clock.now, Publish(arrival))

    def answer(self, name: str, attempt: int, task_id: str, iteration: int | None) -> None:
        answers = self.mocks.steps.get(name)
        index = self.sent.get(name, 0)
        self.sent[name] = index + 1
        step = self.definition.step(name)
        if answers:
            chosen: int | None = min(index, len(answers) - 1)  # the last answer repeats
            answer = answers[chosen or 0]
        elif self.mocks.strict:
            chosen, answer = None, Answer(error=f"no mock for step {name!r} (mocks.strict is true)",
                                          retryable=False)
        else:
            chosen, answer = None, Answer(output=DEFAULT_OUTPUT)
        self.used.append(Used(step=name, attempt=attempt, iteration=iteration, answer=chosen))
        command: AnyCommand
        if answer.error is None:
            command = CompleteStep(step=name, attempt=attempt, task_id=task_id, output=answer.output,
                                   iteration=iteration)
        else:
            command = FailStep(step=name, attempt=attempt, task_id=task_id, error=_error(answer, step),
                               iteration=iteration)
        self.clock.at(self.clock.now + answer.delay_ms, Deliver(command))

    # -- events and signals ----------------------------------------------------
    def publish(self, arrival: Arrival) -> None:
        if arrival.kind == "signal":
            self.decide(SignalWorkflow(name=arrival.name, payload=arrival.data))
            return
        if arrival.event_id is not None:
            if arrival.event_id in self.event_ids:
                return  # published at most once per id, as publish_event.lua does
            self.event_ids.add(arrival.event_id)
        self._entries += 1
        entry_id = f"{self.clock.now}-{self._entries}"
        self.published.append((entry_id, arrival, self.clock.now))
        for st in list(self.state.steps.values()):
            if st.status == STEP_WAITING and st.wait is not None and _fits(st.wait, arrival):
                self.clock.at(self.clock.now, Deliver(_event_command(st.wait, entry_id, arrival)))

    def catch_up(self, wait: StepWaiting) -> None:
        """A wait that begins takes the first event since the start that no earlier wait took."""
        taken = self.state.last_events.get(wait_signature(wait.event_type, wait.filter))
        for entry_id, arrival, _ in self.published:
            if _fits(wait, arrival) and (taken is None or entry_key(entry_id) > entry_key(taken)):
                self.clock.at(self.clock.now, Deliver(_event_command(wait, entry_id, arrival)))
                return

    # -- timers ----------------------------------------------------------------
    def rearm(self) -> None:
        """The timers the state calls for, armed; the others disarmed (plan.py's ZADD/ZREM)."""
        wanted = dict(self.timers())
        for key in self.clock.armed():
            if key not in wanted:
                self.clock.disarm(key)
        for key, due in wanted.items():
            self.clock.arm(key, due)

    def timers(self) -> list[tuple[TimerKey, int]]:
        s = self.state
        out: list[tuple[TimerKey, int]] = []
        if s.timeout_at is not None and s.status in (STATUS_RUNNING, STATUS_PAUSED):
            out.append((("workflow_timeout", "", 0), s.timeout_at))
        for name, st in s.steps.items():
            if st.timeout_at is not None and st.status in (STEP_SCHEDULED, STEP_WAITING, STEP_CHILD) \
                    and not (st.items is not None and st.iteration in st.done):  # not a loop between items
                out.append((("timeout", name, st.attempt), st.timeout_at))
            if st.status == STEP_RETRYING and st.retry_at is not None:
                out.append((("retry", name, st.attempt), st.retry_at))
            if st.status == STEP_DELAYED and name in self.delays:
                out.append((("delay", name, st.attempt), self.delays[name]))
        return out

    # -- the end -----------------------------------------------------------------
    def stall_reason(self) -> str:
        waits = [f"{n} waits for event {st.wait.event_type!r}" + (f" with {st.wait.filter}" if st.wait.filter else "")
                 for n, st in self.state.steps.items() if st.status == STEP_WAITING and st.wait is not None]
        what = "; ".join(waits) or f"the instance is {self.state.status} and nothing is due"
        return f"nothing more can happen: {what} (add it to mocks.events, or give the step a timeout)"

    def outcome(self, status: str, reason: str | None = None) -> Outcome:
        return Outcome(state=self.state, history=self.history, used=self.used, status=status, reason=reason,
                       events=self.published)


def _fits(wait: StepWaiting, arrival: Arrival) -> bool:
    return arrival.name == wait.event_type and matches(wait.filter, arrival.data)


def _event_command(wait: StepWaiting, entry_id: str, arrival: Arrival) -> DeliverEvent:
    return DeliverEvent(step=wait.step, attempt=wait.attempt, event_type=arrival.name, event_id=entry_id,
                        data=dict(arrival.data))


def _error(answer: Answer, step: Step) -> StepError:
    """The failure a mocked error stands for, with the kind the real worker would give it."""
    assert answer.error is not None
    kind = "http" if answer.status is not None else "child" if step.type == "sub_workflow" else "handler"
    return StepError(message=answer.error, retryable=_retryable(answer, step), kind=kind, status=answer.status,
                     retry_after_ms=answer.retry_after_ms)


def _retryable(answer: Answer, step: Step) -> bool:
    """As the real worker decides: the mock's say, else by HTTP status, else a handler error is
    retryable and a child workflow's failure is not."""
    if answer.retryable is not None:
        return answer.retryable
    if answer.status is not None:
        status = answer.status
        return status >= 500 or status in _RETRYABLE_STATUS or status in step.retry_on_status
    return step.type != "sub_workflow"
