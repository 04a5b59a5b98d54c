"""Effects derived from new events: tasks to dispatch, timers to arm or disarm,
event-wait subscriptions to register or drop, and commands for other instances
(sub-workflows and their parents) put in the partition's outbox. Pure; the
store writes them in the same atomic script as the events, so they exist if and
only if the events do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from engine.core.codec import command_fields
from engine.core.ids import encode_shape, filter_shape, partition_of
from engine.core.model import (
    STEP_CHILD,
    STEP_DELAYED,
    ChildStarted,
    CompensationStarted,
    Event,
    NotificationScheduled,
    State,
    StepCompleted,
    StepDelayed,
    StepFailed,
    StepIterationCompleted,
    StepScheduled,
    StepSkipped,
    StepWaiting,
    TaskData,
    WorkflowCancelled,
    WorkflowCompensated,
    WorkflowCompleted,
    WorkflowCreated,
    WorkflowFailed,
    WorkflowRetried,
    WorkflowStarted,
    encode,
)
from engine.core.steps import idempotency_key
from engine.store.keys import Keys


class Effects:
    __slots__ = ("finished", "lanes", "outbox", "sadd", "srem", "tasks", "timers_add", "timers_rem")

    def __init__(self) -> None:
        # (task stream key, task_id, step, attempt, data JSON)
        self.tasks: list[tuple[str, str, str, int, bytes]] = []
        # task stream key -> its priority, for the tasks that go to a priority lane (n > 0)
        self.lanes: dict[str, int] = {}
        self.timers_add: list[tuple[int, str]] = []
        self.timers_rem: list[str] = []
        self.sadd: list[tuple[str, str]] = []
        self.srem: list[tuple[str, str]] = []
        # commands for instances in other partitions: (target inbox key, command fields)
        self.outbox: list[tuple[str, dict[str, bytes | str]]] = []
        self.finished = False  # reached a final status: its streams may be retired later

    def __bool__(self) -> bool:
        return bool(self.tasks or self.timers_add or self.timers_rem or self.sadd or self.srem or self.outbox)


def timer_member(instance_id: str, kind: str, step: str, attempt: int) -> str:
    """The timer set member: cmd_id, command type, instance id and data, one per line.

    Deterministic, so the same timer is disarmed by value. Instance ids and JSON
    never contain a raw newline, which keeps the Lua side a plain split.
    """
    data = orjson.dumps({"kind": kind, "step": step, "attempt": attempt}).decode()
    return f"timer:{kind}:{step}:{attempt}\ntimer\n{instance_id}\n{data}"


def wait_member(instance_id: str, step: str, attempt: int) -> str:
    return orjson.dumps([instance_id, step, attempt]).decode()


def lane_priority(priority: int) -> int:
    """The lane of an instance's tasks: its priority, 0-9 (a raw start may carry anything)."""
    return min(max(priority, 0), 9)


def plan(before: State, events: list[Event], keys: Keys, p: int) -> Effects:
    planner = _Planner(before, keys, p)
    for event in events:
        handler = _PLANNERS.get(type(event))
        if handler is not None:
            handler(planner, event)
    return planner.fx


class _Planner:
    """Walks the new events, remembering what is armed so it can be disarmed."""

    def __init__(self, before: State, keys: Keys, p: int) -> None:
        self.fx = Effects()
        self.keys = keys
        self.p = p
        self.iid = before.id
        self.context: dict[str, Any] = before.context
        self.workflow, self.correlation_id, self.parent = before.workflow, before.correlation_id, before.parent
        self.traceparent = before.traceparent
        self.priority = before.priority
        self.deadline = before.timeout_at
        steps = before.steps.items()
        self.waits = {n: st.wait for n, st in steps if st.wait is not None}
        self.timeouts = {n: st.attempt for n, st in steps if st.timeout_at is not None}
        self.retries = {n: st.attempt for n, st in steps if st.retry_at is not None}
        self.delays = {n: st.attempt for n, st in steps if st.status == STEP_DELAYED}
        self.children = {n: st.child_id for n, st in steps if st.status == STEP_CHILD and st.child_id}

    def timer(self, at: int, kind: str, step: str, attempt: int) -> None:
        self.fx.timers_add.append((at, timer_member(self.iid, kind, step, attempt)))

    def untimer(self, kind: str, step: str, attempt: int) -> None:
        self.fx.timers_rem.append(timer_member(self.iid, kind, step, attempt))

    def disarm(self, step: str) -> None:
        wait = self.waits.pop(step, None)
        if wait is not None:
            self.fx.srem.append((self.wait_key(wait), wait_member(self.iid, step, wait.attempt)))
        attempt = self.timeouts.pop(step, None)
        if attempt is not None:
            self.untimer("timeout", step, attempt)

    def wait_key(self, wait: StepWaiting) -> str:
        shape = filter_shape(wait.filter)
        return self.keys.wait_index(self.p, wait.event_type, shape, [wait.filter[k] for k in shape])

    def end_deadline(self) -> None:
        if self.deadline is not None:
            self.untimer("workflow_timeout", "", 0)
            self.deadline = None

    def tell_parent(self, type_: str, data: dict[str, Any]) -> None:
        """A sub-workflow's outcome becomes its parent step's result."""
        parent = self.parent
        if parent is None:
            return
        body = {"step": parent.step, "attempt": parent.attempt, "task_id": self.iid, **data}
        target = self.keys.inbox(self.keys.partition(parent.id))
        self.fx.outbox.append((target, command_fields(type_, parent.id, body, f"child:{self.iid}:{type_}")))

    def task(self, e: StepScheduled | NotificationScheduled, kind: str, iteration: int | None = None) -> None:
        if isinstance(e, StepScheduled):
            key = idempotency_key(self.iid, e.step, e.run if e.run is not None else e.attempt, e.iteration)
            method, http = e.method, e.http
        else:  # a notification is sent once per final failure: its task id names it
            key, method, http = idempotency_key(self.iid, e.step, e.attempt, "notify"), None, None
        data = TaskData(service=e.queue, endpoint=e.endpoint, input=e.input, context=self.context,
                        workflow=self.workflow, correlation_id=self.correlation_id, kind=kind, iteration=iteration,
                        method=method, idempotency_key=key, http=http, traceparent=self.traceparent)
        lane = lane_priority(self.priority)
        stream = self.keys.tasks(self.p, e.queue, lane)
        if lane:  # append.lua registers the lane (and its activity group) before the task's XADD
            self.fx.lanes[stream] = lane
        self.fx.tasks.append((stream, e.task_id, e.step, e.attempt, encode(data)))


def _created(pl: _Planner, e: WorkflowCreated) -> None:
    pl.iid, pl.context = e.instance_id, e.context
    pl.workflow, pl.correlation_id, pl.parent = e.workflow, e.correlation_id, e.parent
    pl.traceparent = e.traceparent
    pl.priority = e.priority


def _started(pl: _Planner, e: WorkflowStarted | WorkflowRetried) -> None:
    if e.timeout_at is not None:
        pl.end_deadline()
        pl.timer(e.timeout_at, "workflow_timeout", "", 0)
        pl.deadline = e.timeout_at


def _completed(pl: _Planner, e: WorkflowCompleted) -> None:
    pl.end_deadline()
    pl.fx.finished = True
    pl.tell_parent("step.completed", {"output": e.output})


def _failed(pl: _Planner, e: WorkflowFailed | WorkflowCompensated) -> None:
    pl.end_deadline()
    if isinstance(e, WorkflowCompensated):
        _disarm_all(pl)  # final: nothing it waited for matters any more
        pl.fx.finished = True
    what = "failed" if isinstance(e, WorkflowFailed) else "was compensated"
    message = f"child workflow {pl.iid} {what}" + (f": {e.error.message}" if e.error else "")
    pl.tell_parent("step.failed", {"error": {"message": message, "retryable": False, "kind": "child"}})


def _compensating(pl: _Planner, e: CompensationStarted) -> None:
    pl.end_deadline()


def _disarm_all(pl: _Planner) -> None:
    for step in list(pl.waits) + list(pl.timeouts):
        pl.disarm(step)
    for step, attempt in pl.retries.items():
        pl.untimer("retry", step, attempt)
    for step, attempt in pl.delays.items():
        pl.untimer("delay", step, attempt)
    pl.retries.clear()
    pl.delays.clear()


def _cancelled(pl: _Planner, e: WorkflowCancelled) -> None:
    pl.end_deadline()
    pl.fx.finished = True
    _disarm_all(pl)
    for child in pl.children.values():  # a cancelled parent cancels the children it is waiting for
        target = pl.keys.inbox(partition_of(child, pl.keys.partitions))
        pl.fx.outbox.append((target, command_fields("cancel", child, {"reason": f"parent {pl.iid} was cancelled"},
                                                    f"cancel:{child}")))
    pl.children.clear()
    pl.tell_parent("step.failed", {"error": {"message": f"child workflow {pl.iid} was cancelled",
                                             "retryable": False, "kind": "child"}})


def _scheduled(pl: _Planner, e: StepScheduled) -> None:
    pl.task(e, "step", e.iteration)
    pl.retries.pop(e.step, None)
    if e.timeout_at is not None:
        pl.timer(e.timeout_at, "timeout", e.step, e.attempt)
        pl.timeouts[e.step] = e.attempt


def _waiting(pl: _Planner, e: StepWaiting) -> None:
    shape = filter_shape(e.filter)
    pl.fx.sadd.append((pl.keys.wait_shapes(pl.p, e.event_type), encode_shape(shape)))
    pl.fx.sadd.append((pl.wait_key(e), wait_member(pl.iid, e.step, e.attempt)))
    pl.waits[e.step] = e
    pl.retries.pop(e.step, None)
    if e.timeout_at is not None:
        pl.timer(e.timeout_at, "timeout", e.step, e.attempt)
        pl.timeouts[e.step] = e.attempt


def _step_over(pl: _Planner, e: StepCompleted | StepFailed | StepIterationCompleted | StepSkipped) -> None:
    pl.disarm(e.step)
    pl.delays.pop(e.step, None)
    pl.children.pop(e.step, None)
    if isinstance(e, StepFailed) and e.retry_at is not None:
        pl.timer(e.retry_at, "retry", e.step, e.attempt)
        pl.retries[e.step] = e.attempt


def _delayed(pl: _Planner, e: StepDelayed) -> None:
    pl.timer(e.until, "delay", e.step, e.attempt)
    pl.delays[e.step] = e.attempt
    pl.retries.pop(e.step, None)


def _child(pl: _Planner, e: ChildStarted) -> None:
    data: dict[str, Any] = {"workflow": e.workflow, "context": e.input,
                            "parent": {"id": pl.iid, "step": e.step, "attempt": e.attempt}}
    if e.version:
        data["version"] = e.version
    if pl.correlation_id:
        data["correlation_id"] = pl.correlation_id  # a child shares its parent's correlation id
    if pl.traceparent:
        data["traceparent"] = pl.traceparent  # ... and its trace
    if pl.priority:
        data["priority"] = lane_priority(pl.priority)  # ... and its priority: its tasks take the same lane
    target = pl.keys.inbox(partition_of(e.child_id, pl.keys.partitions))
    pl.fx.outbox.append((target, command_fields("start", e.child_id, data, f"start:{e.child_id}")))
    pl.retries.pop(e.step, None)
    pl.children[e.step] = e.child_id
    if e.timeout_at is not None:
        pl.timer(e.timeout_at, "timeout", e.step, e.attempt)
        pl.timeouts[e.step] = e.attempt


def _notification(pl: _Planner, e: NotificationScheduled) -> None:
    pl.task(e, "notification")


_PLANNERS: dict[type, Callable[[_Planner, Any], None]] = {
    WorkflowCreated: _created,
    WorkflowStarted: _started,
    WorkflowRetried: _started,
    WorkflowCompleted: _completed,
    WorkflowFailed: _failed,
    WorkflowCompensated: _failed,
    CompensationStarted: _compensating,
    WorkflowCancelled: _cancelled,
    StepScheduled: _scheduled,
    StepWaiting: _waiting,
    StepCompleted: _step_over,
    StepFailed: _step_over,
    StepIterationCompleted: _step_over,
    StepSkipped: _step_over,
    StepDelayed: _delayed,
    ChildStarted: _child,
    NotificationScheduled: _notification,
}
