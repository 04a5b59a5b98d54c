"""Effects derived from new events: tasks to dispatch, timers to arm or disarm,
event-wait subscriptions to register or drop. Pure; the store writes them in
the same atomic script as the events, so they exist if and only if the events do.
"""

from __future__ import annotations

from typing import Any

import orjson

from .keys import Keys, encode_shape, filter_shape
from .model import (
    Event,
    NotificationScheduled,
    State,
    StepCompleted,
    StepFailed,
    StepScheduled,
    StepWaiting,
    TaskData,
    WorkflowCancelled,
    WorkflowCompleted,
    WorkflowCreated,
    WorkflowFailed,
    WorkflowRetried,
    WorkflowStarted,
    encode,
)


class Effects:
    __slots__ = ("tasks", "timers_add", "timers_rem", "sadd", "srem")

    def __init__(self) -> None:
        # (task stream key, task_id, step, attempt, data JSON)
        self.tasks: list[tuple[str, str, str, int, bytes]] = []
        self.timers_add: list[tuple[int, str]] = []
        self.timers_rem: list[str] = []
        self.sadd: list[tuple[str, str]] = []
        self.srem: list[tuple[str, str]] = []

    def __bool__(self) -> bool:
        return bool(self.tasks or self.timers_add or self.timers_rem or self.sadd or self.srem)


def timer_member(instance_id: str, kind: str, step: str, attempt: int) -> str:
    """The timer set member: cmd_id, command type, instance id and data, one per line.

    Deterministic, so the same timer is disarmed by value. Instance ids and JSON
    never contain a raw newline, which keeps the Lua side a plain split.
    """
    data = orjson.dumps({"kind": kind, "step": step, "attempt": attempt}).decode()
    return f"timer:{kind}:{step}:{attempt}\ntimer\n{instance_id}\n{data}"


def wait_member(instance_id: str, step: str, attempt: int) -> str:
    return orjson.dumps([instance_id, step, attempt]).decode()


def plan(before: State, events: list[Event], keys: Keys, p: int) -> Effects:
    fx = Effects()
    iid = before.id
    waits: dict[str, StepWaiting] = {n: st.wait for n, st in before.steps.items() if st.wait is not None}
    timeouts: dict[str, int] = {n: st.attempt for n, st in before.steps.items() if st.timeout_at is not None}
    retries: dict[str, int] = {n: st.attempt for n, st in before.steps.items() if st.retry_at is not None}
    context: dict[str, Any] = before.context
    workflow, correlation_id = before.workflow, before.correlation_id
    deadline = before.timeout_at
    for e in events:
        if isinstance(e, WorkflowCreated):
            iid, context = e.instance_id, e.context
            workflow, correlation_id = e.workflow, e.correlation_id
        elif isinstance(e, (WorkflowStarted, WorkflowRetried)):
            if e.timeout_at is not None:
                if deadline is not None:
                    fx.timers_rem.append(timer_member(iid, "workflow_timeout", "", 0))
                fx.timers_add.append((e.timeout_at, timer_member(iid, "workflow_timeout", "", 0)))
                deadline = e.timeout_at
        elif isinstance(e, (WorkflowCompleted, WorkflowFailed)):
            if deadline is not None:
                fx.timers_rem.append(timer_member(iid, "workflow_timeout", "", 0))
                deadline = None
        elif isinstance(e, StepScheduled):
            data = TaskData(
                service=e.queue, endpoint=e.endpoint, input=e.input, context=context,
                workflow=workflow, correlation_id=correlation_id,
            )
            fx.tasks.append((keys.tasks(p, e.queue), e.task_id, e.step, e.attempt, encode(data)))
            retries.pop(e.step, None)
            if e.timeout_at is not None:
                fx.timers_add.append((e.timeout_at, timer_member(iid, "timeout", e.step, e.attempt)))
                timeouts[e.step] = e.attempt
        elif isinstance(e, StepWaiting):
            shape = filter_shape(e.filter)
            index = keys.wait_index(p, e.event_type, shape, [e.filter[k] for k in shape])
            fx.sadd.append((keys.wait_shapes(p, e.event_type), encode_shape(shape)))
            fx.sadd.append((index, wait_member(iid, e.step, e.attempt)))
            waits[e.step] = e
            retries.pop(e.step, None)
            if e.timeout_at is not None:
                fx.timers_add.append((e.timeout_at, timer_member(iid, "timeout", e.step, e.attempt)))
                timeouts[e.step] = e.attempt
        elif isinstance(e, (StepCompleted, StepFailed)):
            _disarm(fx, keys, p, iid, e.step, waits, timeouts)
            if isinstance(e, StepFailed) and e.retry_at is not None:
                fx.timers_add.append((e.retry_at, timer_member(iid, "retry", e.step, e.attempt)))
                retries[e.step] = e.attempt
        elif isinstance(e, NotificationScheduled):
            data = TaskData(
                service=e.queue, endpoint=e.endpoint, input=e.input, context=context,
                workflow=workflow, correlation_id=correlation_id, kind="notification",
            )
            fx.tasks.append((keys.tasks(p, e.queue), e.task_id, e.step, e.attempt, encode(data)))
        elif isinstance(e, WorkflowCancelled):
            if deadline is not None:
                fx.timers_rem.append(timer_member(iid, "workflow_timeout", "", 0))
                deadline = None
            for step in list(waits) + list(timeouts):
                _disarm(fx, keys, p, iid, step, waits, timeouts)
            for step, attempt in retries.items():
                fx.timers_rem.append(timer_member(iid, "retry", step, attempt))
            retries.clear()
    return fx


def _disarm(
    fx: Effects, keys: Keys, p: int, iid: str, step: str,
    waits: dict[str, StepWaiting], timeouts: dict[str, int],
) -> None:
    wait = waits.pop(step, None)
    if wait is not None:
        shape = filter_shape(wait.filter)
        index = keys.wait_index(p, wait.event_type, shape, [wait.filter[k] for k in shape])
        fx.srem.append((index, wait_member(iid, step, wait.attempt)))
    attempt = timeouts.pop(step, None)
    if attempt is not None:
        fx.timers_rem.append(timer_member(iid, "timeout", step, attempt))
