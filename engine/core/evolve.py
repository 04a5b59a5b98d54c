"""evolve: fold one event into an instance's state. Pure: no I/O, no clock.

``fold`` copies the state once and then applies every event to the copy, so a
batch fold costs O(events + steps), not O(events * steps); ``evolve`` is
``fold`` of one event and the two always agree (a property test checks it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from engine.core.ids import wait_signature
from engine.core.model import (
    STATUS_CANCELLED,
    STATUS_COMPENSATED,
    STATUS_COMPENSATING,
    STATUS_COMPLETED,
    STATUS_CREATED,
    STATUS_FAILED,
    STATUS_PAUSED,
    STATUS_QUEUED,
    STATUS_RUNNING,
    STEP_CHILD,
    STEP_COMPLETED,
    STEP_DELAYED,
    STEP_FAILED,
    STEP_RETRYING,
    STEP_SCHEDULED,
    STEP_SKIPPED,
    STEP_WAITING,
    ChildStarted,
    CommandRejected,
    CompensationStarted,
    Event,
    HistoryLarge,
    NotificationScheduled,
    SignalReceived,
    State,
    StepCompleted,
    StepDelayed,
    StepFailed,
    StepIterationCompleted,
    StepScheduled,
    StepSkipped,
    StepState,
    StepWaiting,
    WorkflowCancelled,
    WorkflowCompensated,
    WorkflowCompleted,
    WorkflowCreated,
    WorkflowFailed,
    WorkflowPaused,
    WorkflowQueued,
    WorkflowResumed,
    WorkflowRetried,
    WorkflowStarted,
)

replace = msgspec.structs.replace


def evolve(state: State, event: Event, ts: int | None = None) -> State:
    return fold(state, (event,), ts)


def fold(state: State, events: Iterable[Event], ts: int | None = None) -> State:
    return fold_stored(state, ((e, ts) for e in events))


def fold_stored(state: State, stored: Iterable[tuple[Event, int | None]]) -> State:
    """Fold events read back from a stream, each with its own timestamp."""
    s = replace(state, steps=dict(state.steps))
    added: list[str] = []  # the seen set is copied once per fold, not once per event
    for event, ts in stored:
        _apply(s, event, ts)
        if event.cmd is not None:
            added.append(event.cmd)
    if added:
        s.seen = s.seen.union(added)
    return s


def _apply(s: State, e: Event, ts: int | None) -> None:
    s.version += 1
    if ts is not None:
        s.updated_ms = ts
    handler = _HANDLERS.get(type(e))
    if handler is not None:
        handler(s, e, ts)


def _created(s: State, e: WorkflowCreated, ts: int | None) -> None:
    s.id = e.instance_id
    s.status = STATUS_CREATED
    s.workflow = e.workflow
    s.def_version = e.version
    s.context = e.context
    s.correlation_id = e.correlation_id
    s.parent = e.parent
    s.traceparent = e.traceparent
    s.created_ms = ts
    s.priority = e.priority
    s.tenant = e.tenant
    s.concurrency_key = e.concurrency_key


def _queued(s: State, e: WorkflowQueued, ts: int | None) -> None:
    s.status = STATUS_QUEUED


def _started(s: State, e: WorkflowStarted, ts: int | None) -> None:
    s.status = STATUS_RUNNING
    s.timeout_at = e.timeout_at


def _scheduled(s: State, e: StepScheduled, ts: int | None) -> None:
    prev = s.step(e.step)
    results, done, iteration, items = prev.results, prev.done, prev.iteration, prev.items
    if e.items is not None:  # a loop starts: its items, from the first
        items, results, done, iteration = e.items, [], [], 0
    elif items is not None and e.iteration is not None:  # a loop's next item, or a retry of this one
        iteration = e.iteration
    elif e.attempt != prev.attempt:  # a validation step's parts start over at each attempt
        results, done = [], []
    s.steps[e.step] = replace(
        prev,
        status=STEP_SCHEDULED,
        attempt=e.attempt,
        task_id=e.task_id,
        error=None,
        retry_at=None,
        timeout_at=e.timeout_at,
        started_ms=prev.started_ms if prev.started_ms is not None else ts,
        finished_ms=None,
        results=results,
        done=done,
        iteration=iteration,
        items=items,
        run=e.run if e.run is not None else e.attempt,
    )


def _waiting(s: State, e: StepWaiting, ts: int | None) -> None:
    prev = s.step(e.step)
    s.steps[e.step] = replace(
        prev,
        status=STEP_WAITING,
        attempt=e.attempt,
        wait=e,
        error=None,
        retry_at=None,
        timeout_at=e.timeout_at,
        started_ms=prev.started_ms if prev.started_ms is not None else ts,
        finished_ms=None,
    )


def _completed(s: State, e: StepCompleted, ts: int | None) -> None:
    prev = s.step(e.step)
    if e.event_id is not None and prev.wait is not None:
        s.last_events = {**s.last_events, wait_signature(prev.wait.event_type, prev.wait.filter): e.event_id}
    s.steps[e.step] = replace(
        prev,
        status=STEP_COMPLETED,
        attempt=max(prev.attempt, e.attempt),
        output=e.output,
        error=None,
        wait=None,
        timeout_at=None,
        finished_ms=ts,
    )


def _failed(s: State, e: StepFailed, ts: int | None) -> None:
    prev = s.step(e.step)
    retrying = e.retry_at is not None
    s.steps[e.step] = replace(
        prev,
        status=STEP_RETRYING if retrying else STEP_FAILED,
        attempt=max(prev.attempt, e.attempt),
        error=e.error,
        wait=None,
        timeout_at=None,
        retry_at=e.retry_at,
        handler_retries=prev.handler_retries + (1 if e.handler_retry else 0),
        continued=e.continued,
        finished_ms=None if retrying else ts,
    )


def _iteration_completed(s: State, e: StepIterationCompleted, ts: int | None) -> None:
    prev = s.step(e.step)
    results = list(prev.results)
    results.extend([None] * (e.iteration + 1 - len(results)))
    results[e.iteration] = e.output
    s.steps[e.step] = replace(
        prev,
        results=results,
        done=[*prev.done, e.iteration],
        # each loop item gets a fresh attempt budget
        budget_from=e.attempt if prev.items is not None else prev.budget_from,
    )


def _skipped(s: State, e: StepSkipped, ts: int | None) -> None:
    prev = s.step(e.step)
    s.steps[e.step] = replace(prev, status=STEP_SKIPPED, reason=e.reason, finished_ms=ts)


def _delayed(s: State, e: StepDelayed, ts: int | None) -> None:
    prev = s.step(e.step)
    s.steps[e.step] = replace(
        prev, status=STEP_DELAYED, attempt=e.attempt, error=None, retry_at=None, finished_ms=None,
        started_ms=prev.started_ms if prev.started_ms is not None else ts,
    )


def _child_started(s: State, e: ChildStarted, ts: int | None) -> None:
    prev = s.step(e.step)
    s.steps[e.step] = replace(
        prev, status=STEP_CHILD, attempt=e.attempt, child_id=e.child_id, task_id=e.child_id, error=None,
        retry_at=None, finished_ms=None, started_ms=prev.started_ms if prev.started_ms is not None else ts,
        timeout_at=e.timeout_at,
    )


def _signalled(s: State, e: SignalReceived, ts: int | None) -> None:
    s.signals = {**s.signals, e.name: e.payload}


def _compensating(s: State, e: CompensationStarted, ts: int | None) -> None:
    s.status = STATUS_COMPENSATING
    s.compensation = list(e.steps)
    s.error = e.error
    s.failed_step = e.step


def _compensated(s: State, e: WorkflowCompensated, ts: int | None) -> None:
    s.status = STATUS_COMPENSATED
    s.finished_ms = ts
    s.timeout_at = None


def _notified(s: State, e: NotificationScheduled, ts: int | None) -> None:
    return None  # recorded in the history; the instance's state does not change


def _paused(s: State, e: WorkflowPaused, ts: int | None) -> None:
    s.status = STATUS_PAUSED


def _resumed(s: State, e: WorkflowResumed, ts: int | None) -> None:
    s.status = STATUS_RUNNING


def _retried(s: State, e: WorkflowRetried, ts: int | None) -> None:
    s.status = STATUS_RUNNING
    s.error = None
    s.failed_step = None
    s.finished_ms = None
    s.timeout_at = e.timeout_at
    # A rewind starts a new run (a new idempotency key); resuming a failed step keeps its run.
    # Events from before `rewound` existed: a retry with from_step rewound every step it lists.
    rewound = set(e.rewound) if e.rewound or e.from_step is None else set(e.steps)
    for name in e.steps:
        prev = s.step(name)
        # Back to pending with a fresh budget; attempt numbers keep counting so
        # every attempt keeps its own task id.
        s.steps[name] = StepState(attempt=prev.attempt, budget_from=prev.attempt, started_ms=prev.started_ms,
                                  run=None if name in rewound else prev.run)
    if e.from_step is not None and e.input is not None:
        s.overrides = {**s.overrides, e.from_step: e.input}


def _wf_completed(s: State, e: WorkflowCompleted, ts: int | None) -> None:
    s.status = STATUS_COMPLETED
    s.output = e.output
    s.finished_ms = ts
    s.timeout_at = None


def _wf_failed(s: State, e: WorkflowFailed, ts: int | None) -> None:
    s.status = STATUS_FAILED
    s.error = e.error
    s.failed_step = e.step
    s.finished_ms = ts
    s.timeout_at = None


def _cancelled(s: State, e: WorkflowCancelled, ts: int | None) -> None:
    s.status = STATUS_CANCELLED
    s.finished_ms = ts
    s.timeout_at = None
    for name, st in list(s.steps.items()):
        if st.status in (STEP_WAITING, STEP_RETRYING, STEP_SCHEDULED, STEP_DELAYED):
            s.steps[name] = replace(st, wait=None, timeout_at=None, retry_at=None)


def _rejected(s: State, e: CommandRejected, ts: int | None) -> None:
    return None  # a refusal is audited, it changes nothing


_HANDLERS: dict[type, Callable[[State, Any, int | None], None]] = {
    WorkflowCreated: _created,
    WorkflowStarted: _started,
    WorkflowQueued: _queued,
    StepScheduled: _scheduled,
    StepWaiting: _waiting,
    StepCompleted: _completed,
    StepFailed: _failed,
    NotificationScheduled: _notified,
    StepIterationCompleted: _iteration_completed,
    StepSkipped: _skipped,
    StepDelayed: _delayed,
    ChildStarted: _child_started,
    SignalReceived: _signalled,
    CompensationStarted: _compensating,
    WorkflowCompensated: _compensated,
    WorkflowPaused: _paused,
    WorkflowResumed: _resumed,
    WorkflowRetried: _retried,
    WorkflowCompleted: _wf_completed,
    WorkflowFailed: _wf_failed,
    WorkflowCancelled: _cancelled,
    CommandRejected: _rejected,
    HistoryLarge: _rejected,
}
