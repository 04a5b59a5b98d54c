"""`foldflow stuck`: running (or paused) instances without progress for a while,
each with what it waits for, so an operator knows what to do.

Candidates come from what is in flight, never from a scan of instances: open
event waits (the wait index), tasks in the task streams, durable timers; plus
the members of ``listed`` sorted sets (the CLI passes the projections' status
indexes of paused and created instances, so a paused instance with nothing in
flight is found too, and with ``deep`` also the running ones); with ``deep``
also every instance in the partition feeds (slow; finds instances with nothing
in flight at all, e.g. a step result lost with Redis's last second of writes). Each candidate's state is folded from its own stream, and
it is stuck when it is not final and its last event is older than the limit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import orjson

from engine.core.evolve import fold_stored
from engine.core.model import (
    INITIAL,
    STATUS_CREATED,
    STATUS_PAUSED,
    STATUS_RUNNING,
    STEP_RETRYING,
    STEP_SCHEDULED,
    STEP_WAITING,
    State,
)
from engine.runtime.heartbeat import read_heartbeats
from engine.store.connection import Redis
from engine.store.events import Store
from engine.store.inventory import _glob_escape, breaker_states, task_streams
from engine.store.keys import ACTIVITY_GROUP, Keys
from engine.store.limits import LimitStore, limits_runner, waiting_reason
from engine.store.queues import env_name
from engine.store.replies import text

STUCK_STATUSES = frozenset({STATUS_CREATED, STATUS_RUNNING, STATUS_PAUSED})
TIMER_GRACE_MS = 5_000  # a timer this late means no engine worker is firing timers


class Stuck(msgspec.Struct, kw_only=True):
    instance_id: str
    workflow: str | None
    status: str
    partition: int
    correlation_id: str | None
    idle_s: float
    last_event_ms: int | None
    waits_for: list[str]


class TaskSeen(msgspec.Struct, kw_only=True):
    stream: str
    queue: str
    entry_id: str


def _age(ms: int) -> str:
    s = ms / 1000
    if s < 120:
        return f"{s:.0f}s"
    if s < 7200:
        return f"{s / 60:.0f}m"
    return f"{s / 3600:.1f}h"


async def _candidates(redis: Redis, keys: Keys, parts: Sequence[int], deep: bool,
                      tasks: dict[str, tuple[int, str]], listed: Sequence[str] = (),
                      ) -> tuple[set[str], dict[tuple[str, str, int], TaskSeen]]:
    """Every instance that could be stuck: waiting for an event, with a task or timer out, or listed."""
    ids = await _waiting(redis, keys, set(parts))
    out, seen_tasks = await _tasks_out(redis, tasks)
    ids.update(out)
    ids.update(await _timed_or_listed(redis, keys, parts, listed))
    if deep:
        for p in parts:
            ids.update(await _in_feed(redis, keys.feed(p)))
    return ids, seen_tasks


async def _waiting(redis: Redis, keys: Keys, wanted: set[int]) -> set[str]:
    ids: set[str] = set()
    pattern = "{" + _glob_escape(keys.prefix) + ":*}:wait:*"
    async for raw in redis.scan_iter(match=pattern, count=1000, _type="set"):
        key = text(raw)
        try:
            if keys.stream_partition(key) not in wanted:
                continue
        except ValueError:
            continue
        for member in await redis.smembers(key):
            ids.add(str(orjson.loads(member)[0]))
    return ids


async def _tasks_out(redis: Redis, tasks: dict[str, tuple[int, str]],
                     ) -> tuple[set[str], dict[tuple[str, str, int], TaskSeen]]:
    ids: set[str] = set()
    seen: dict[tuple[str, str, int], TaskSeen] = {}
    for stream, (_, queue) in tasks.items():
        rows: Any = await redis.xrange(stream, count=10_000)
        for entry_id, fields in rows:
            iid, step, attempt = (fields.get(b"id"), fields.get(b"step"), fields.get(b"attempt"))
            if iid is None:
                continue
            ids.add(text(iid))
            try:
                seen[(text(iid), text(step or b""), int(attempt or 0))] = TaskSeen(
                    stream=stream, queue=queue, entry_id=text(entry_id))
            except ValueError:
                continue
    return ids, seen


async def _timed_or_listed(redis: Redis, keys: Keys, parts: Sequence[int], listed: Sequence[str]) -> set[str]:
    ids: set[str] = set()
    pipe = redis.pipeline(transaction=False)
    for p in parts:
        pipe.zrange(keys.timers(p), 0, -1)
    for key in listed:
        pipe.zrange(key, 0, -1)
    replies = await pipe.execute()
    for members in replies[:len(parts)]:
        for m in members:
            lines = text(m).split("\n")  # a timer member: kind, due, instance id, ...
            if len(lines) >= 3:
                ids.add(lines[2])
    for members in replies[len(parts):]:
        ids.update(text(m) for m in members)
    return ids


async def _in_feed(redis: Redis, feed: str) -> set[str]:
    ids: set[str] = set()
    cursor = "-"
    while True:
        batch: Any = await redis.xrange(feed, min=cursor, count=5_000)
        for _, fields in batch:
            if b"id" in fields:
                ids.add(text(fields[b"id"]))
        if len(batch) < 5_000:
            return ids
        cursor = "(" + text(batch[-1][0])


async def find_stuck(redis: Redis, keys: Keys, older_than_ms: int, *, now_ms: int | None = None,
                     partitions: Sequence[int] | None = None, deep: bool = False,
                     breakers: dict[str, int] | None = None, limit: int = 1_000,
                     listed: Sequence[str] = ()) -> list[Stuck]:
    """Stuck instances, longest idle first (at most ``limit``); ``listed``: sorted sets
    whose members are more candidate instance ids (the projections' status indexes)."""
    now = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    parts = list(range(keys.partitions) if partitions is None else partitions)
    tasks = await task_streams(redis, keys, parts)
    ids, seen_tasks = await _candidates(redis, keys, parts, deep, tasks, listed)
    if breakers is None:
        breakers = await breaker_states(redis, keys, [q for _, q in tasks.values()])
    served: set[str] = set()
    http_workers = 0
    for hb in await read_heartbeats(redis, keys):
        if hb["role"] == "activities":
            served.update(hb["services"])
            http_workers += "http_calls" in hb["counters"]  # only an executor started with --http counts calls
    registered = {text(n) for n in await redis.hkeys(keys.service_names)}
    store = Store(redis, keys)
    limits = LimitStore(limits_runner(redis), keys)  # tasks waiting for their service's limits (issue 16)
    out: list[Stuck] = []
    for iid in sorted(ids):
        try:
            events = await store.read_events(iid)
        except Exception:
            continue
        state = fold_stored(INITIAL, ((e, ts) for _, e, ts in events))
        if state.status not in STUCK_STATUSES or state.updated_ms is None:
            continue
        idle = now - state.updated_ms
        if idle < older_than_ms:
            continue
        reasons = await explain(redis, state, now, seen_tasks, served, breakers,
                                unserved=lambda q: unserved_reason(q, q in registered, http_workers > 0), limits=limits)
        out.append(Stuck(instance_id=iid, workflow=state.workflow, status=state.status,
                         partition=keys.partition(iid), correlation_id=state.correlation_id,
                         idle_s=idle / 1000, last_event_ms=state.updated_ms, waits_for=reasons))
    out.sort(key=lambda s: -s.idle_s)
    return out[:limit]


def unserved_reason(queue: str, registered: bool, http_alive: bool) -> str:
    """Why nobody takes a queue's tasks, naming each way it could resolve (issue: the three of them)."""
    if registered and not http_alive:
        return ("the service is in the registry, but no `foldflow activities --http` is running "
                "(and no handler serves it)")
    if registered:
        return ("the service is in the registry, but no live `activities --http` worker serves it "
                "(are all its instances' URLs refused by FOLDFLOW_HTTP_DENY, or is a handler worker for it gone?)")
    return (f"no handler, no registered service, no {env_name(queue)} "
            f"(register one: `foldflow services register {queue} URL`)")


async def explain(redis: Redis, state: State, now: int, seen_tasks: dict[tuple[str, str, int], TaskSeen],
                  served: set[str], breakers: dict[str, int],
                  unserved: Callable[[str], str] | None = None, limits: LimitStore | None = None) -> list[str]:
    """What the instance waits for, in words an operator can act on."""
    reasons: list[str] = []
    if state.status == STATUS_PAUSED:
        reasons.append(f"paused: nothing new is dispatched until `foldflow resume {state.id}`")
    for name, st in state.steps.items():
        if st.status == STEP_SCHEDULED:
            reasons.append(await _explain_task(redis, state, name, st.attempt, st.task_id, seen_tasks, served,
                                               breakers, unserved, limits))
        elif st.status == STEP_WAITING and st.wait is not None:
            since = now - (st.started_ms or state.updated_ms or now)
            deadline = (f", times out in {_age(st.timeout_at - now)}" if st.timeout_at and st.timeout_at > now
                        else ", no timeout" if not st.timeout_at else ", timeout overdue: are engine workers firing timers?")
            reasons.append(f"step {name}: event {st.wait.event_type!r} matching "
                           f"{orjson.dumps(st.wait.filter).decode()} never came (waiting {_age(since)}{deadline})")
        elif st.status == STEP_RETRYING and st.retry_at is not None:
            if now > st.retry_at + TIMER_GRACE_MS:
                reasons.append(f"step {name}: retry timer overdue by {_age(now - st.retry_at)}: "
                               "no engine worker is firing timers")
            else:
                reasons.append(f"step {name}: retry {st.attempt + 1} scheduled in {_age(max(0, st.retry_at - now))}")
    if not reasons:
        reasons.append("nothing in flight (no task, wait or timer): a result may have been lost; "
                       "send the step's result or cancel/retry the instance")
    return reasons


async def _explain_task(redis: Redis, state: State, step: str, attempt: int, task_id: str | None,
                        seen_tasks: dict[tuple[str, str, int], TaskSeen], served: set[str],
                        breakers: dict[str, int], unserved: Callable[[str], str] | None = None,
                        limits: LimitStore | None = None) -> str:
    seen = seen_tasks.get((state.id, step, attempt))
    what = f"step {step} attempt {attempt}: task {task_id or '?'}"
    if seen is None:
        return (f"{what} is in no task stream: its result is in an inbox not yet decided, or it was lost "
                "(send the step's result, or give the step a timeout)")
    if breakers.get(seen.queue, 0):
        return (f"{what} on queue {seen.queue!r}: the circuit breaker of service {seen.queue!r} is open "
                "(attempts wait until a trial succeeds; fix the service)")
    if seen.queue not in served:
        why = unserved(seen.queue) if unserved is not None else ""
        return f"{what} on queue {seen.queue!r}: no live activity worker serves this queue" + (f": {why}" if why else "")
    if limits is not None and task_id and (waits := await waiting_reason(limits, seen.queue, task_id)):
        return f"{what} on queue {seen.queue!r}: {waits}"
    rows: Any = await redis.xpending_range(seen.stream, ACTIVITY_GROUP, min=seen.entry_id, max=seen.entry_id, count=1)
    if rows:
        row = rows[0]
        return (f"{what} on queue {seen.queue!r}: held by {text(row['consumer'])} for "
                f"{_age(int(row['time_since_delivered']))} (delivered {row['times_delivered']} times): "
                "a slow or hung handler")
    return f"{what} on queue {seen.queue!r}: not picked up yet (the queue's workers are busy or behind)"
