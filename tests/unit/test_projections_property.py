"""Read models equal a reference fold of the events, whatever the delivery:
random workflow histories are appended to the instance streams and feeds, then
projected by two projectors through random batches, crashes (entries read but
never processed, reclaimed later), redeliveries of batches already applied,
and rebuilds in between. Runs on fakeredis (the script contract is the same
on a real redis-server; the end-to-end tests run both)."""

from __future__ import annotations

import asyncio
from typing import Any

import fakeredis
import orjson
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from engine.config import Settings
from engine.core.evolve import fold_stored
from engine.core.model import (
    INITIAL,
    CommandRejected,
    Event,
    NotificationScheduled,
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
    encode,
)
from engine.store.events import event_type
from engine.store.keys import Keys
from projections import PROJECTIONS, Projector, Rebuilder
from projections.base import Applied, dumps
from projections.keys import ViewKeys, group_name
from projections.lifecycle import fold_context, lifecycle_event
from projections.listings import memberships
from tests.support.poll import run

STEPS = ("a", "b", "c")


@st.composite
def history(draw: st.DrawFn, iid: str) -> list[Event]:
    events: list[Event] = [
        WorkflowCreated(instance_id=iid, workflow=draw(st.sampled_from(["W1", "W2"])), version="1",
                        correlation_id=draw(st.sampled_from([None, "c1", "c2"])), context={"n": 1}),
        WorkflowStarted(),
    ]
    attempts = {s: 0 for s in STEPS}
    for _ in range(draw(st.integers(0, 10))):
        step = draw(st.sampled_from(STEPS))
        kind = draw(st.sampled_from(["sched", "wait", "done", "fail", "retry_fail", "pause", "resume",
                                     "retried", "notify", "reject"]))
        if kind == "sched":
            attempts[step] += 1
            events.append(StepScheduled(step=step, attempt=attempts[step], task_id=f"{iid}:{step}", queue="q",
                                        input={"i": attempts[step]}))
        elif kind == "wait":
            attempts[step] += 1
            events.append(StepWaiting(step=step, attempt=attempts[step], event_type="e", filter={"k": 1}))
        elif kind == "done":
            events.append(StepCompleted(step=step, attempt=max(1, attempts[step]), output={"ok": step}))
        elif kind in ("fail", "retry_fail"):
            events.append(StepFailed(step=step, attempt=max(1, attempts[step]), error=StepError(message="boom"),
                                     retry_at=123 if kind == "retry_fail" else None))
        elif kind == "pause":
            events.append(WorkflowPaused(reason="r"))
        elif kind == "resume":
            events.append(WorkflowResumed())
        elif kind == "retried":
            events.append(WorkflowRetried(steps=[step]))
        elif kind == "notify":
            events.append(NotificationScheduled(step=step, attempt=1, task_id=f"{iid}:{step}:notify", queue="n"))
        else:
            events.append(CommandRejected(command="resume", reason="not paused"))
    end = draw(st.sampled_from(["none", "completed", "failed", "cancelled"]))
    if end == "completed":
        events.append(WorkflowCompleted(output={"done": True}))
    elif end == "failed":
        events.append(WorkflowFailed(step="a", error=StepError(message="x", retryable=False)))
    elif end == "cancelled":
        events.append(WorkflowCancelled(reason="bye"))
    return events


@st.composite
def scenario(draw: st.DrawFn) -> tuple[dict[str, list[Event]], list[str], list[tuple[str, int]]]:
    n = draw(st.integers(1, 4))
    histories = {f"i{k}": draw(history(f"i{k}")) for k in range(n)}
    # an interleaving of the instances' appends, each instance in its own order
    order = draw(st.permutations([iid for iid, evs in histories.items() for _ in evs]))
    actions = draw(st.lists(st.tuples(st.sampled_from(["read", "crash", "reclaim", "replay", "rebuild"]),
                                      st.integers(1, 7)), min_size=1, max_size=25))
    return histories, list(order), actions


def reference(vk: ViewKeys, keys: Keys, histories: dict[str, list[Event]]) -> dict[str, Any]:
    """What the read models must hold: a plain fold of each instance's events, in order."""
    out: dict[str, Any] = {}
    for iid, events in histories.items():
        p = keys.partition(iid)
        applied = [Applied(v, 1000 + v, e) for v, e in enumerate(events, 1)]
        view: dict[str, Any] = {}
        for name, projection in PROJECTIONS.items():
            view[name] = dumps(projection.fold_all(None, iid, applied))
            view[f"v:{name}"] = str(len(events)).encode()
        out[vk.view(p, iid)] = view
        ctx = None
        lifecycle = []
        for a in applied:
            ctx = fold_context(ctx, iid, a)
            le = lifecycle_event(ctx, iid, a)
            if le is not None:
                lifecycle.append(dumps(le))
        if lifecycle:
            out[vk.lifecycle(p, iid)] = lifecycle
        record = orjson.loads(view["executions"])
        # the projection's status agrees with the engine's own fold
        assert record["status"] == fold_stored(INITIAL, [(e, 0) for e in events]).status
        for key, score in memberships(vk, p, record).items():
            out.setdefault(key, []).append((iid.encode(), float(score)))
        cid = orjson.loads(view["correlation"])["correlation_id"]
        if cid is not None:
            out.setdefault(vk.correlation(p, cid), []).append((iid.encode(), 1001.0))
    for key, value in out.items():
        if isinstance(value, list) and value and isinstance(value[0], tuple):
            value.sort(key=lambda m: (m[1], m[0]))
    return out


async def dump(redis: Any, prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async for raw in redis.scan_iter(match=f"*{prefix}*:x:*"):
        key = raw.decode()
        if key.endswith(":x:ckpt"):
            continue
        kind = (await redis.type(key)).decode()
        if kind == "hash":
            out[key] = {k.decode(): v for k, v in (await redis.hgetall(key)).items()}
        elif kind == "zset":
            out[key] = await redis.zrange(key, 0, -1, withscores=True)
        elif kind == "list":
            out[key] = await redis.lrange(key, 0, -1)
    return out


async def append(redis: Any, keys: Keys, histories: dict[str, list[Event]], order: list[str]) -> None:
    """XADD as append.lua does: the instance stream and the partition feed."""
    nxt = {iid: 0 for iid in histories}
    for iid in order:
        event = histories[iid][nxt[iid]]
        nxt[iid] += 1
        fields = {"type": event_type(event), "version": nxt[iid], "ts": 1000 + nxt[iid], "data": encode(event)}
        p = keys.partition(iid)
        await redis.xadd(keys.instance(iid, p), fields)
        await redis.xadd(keys.feed(p), {**fields, "id": iid})


async def project(histories: dict[str, list[Event]], order: list[str], actions: list[tuple[str, int]]) -> None:
    server = fakeredis.FakeServer()
    settings = Settings(prefix="prop", partitions=2, block_ms=0, claim_idle_ms=0)
    keys = Keys(settings.prefix, settings.partitions)
    vk = ViewKeys(keys)
    redis = fakeredis.FakeAsyncRedis(server=server)
    projectors = [Projector(fakeredis.FakeAsyncRedis(server=server),
                            Settings(prefix="prop", partitions=2, block_ms=0, claim_idle_ms=0, consumer=c))
                  for c in ("A", "B")]
    await projectors[0].prepare()
    await append(redis, keys, histories, order)
    last: dict[str, list[Any]] = {}
    for i, (action, n) in enumerate(actions):
        pr = projectors[i % 2]
        for name, projection in PROJECTIONS.items():
            reader = pr.readers[name]
            if action == "read":
                entries = await reader.read(n, None)
                await pr.apply(projection, entries)
                last[name] = entries
            elif action == "crash":
                await reader.read(n, None)  # delivered, never processed: stays pending
            elif action == "reclaim":
                await pr.apply(projection, [e for e, _ in await reader.reclaim(0, count=n)])
            elif action == "replay" and last.get(name):
                await pr.apply(projection, last[name])  # a redelivery of entries already applied
        if action == "rebuild":
            await Rebuilder(redis, settings).rebuild(list(PROJECTIONS))
    # drain: whatever is left unread or pending
    for _ in range(50):
        busy = False
        for name, projection in PROJECTIONS.items():
            reader = projectors[0].readers[name]
            entries = await reader.read(100, None) + [e for e, _ in await reader.reclaim(0, count=100)]
            if entries:
                busy = True
                await projectors[0].apply(projection, entries)
        if not busy:
            break
    for p in range(keys.partitions):
        for name in PROJECTIONS:
            assert (await redis.xpending(keys.feed(p), group_name(name)))["pending"] == 0
    assert await dump(redis, "prop") == reference(vk, keys, histories)


@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario())
def test_read_models_equal_reference_fold(case: tuple[dict[str, list[Event]], list[str], list[tuple[str, int]]]) -> None:
    histories, order, actions = case
    run(project(histories, order, actions))


def test_external_events_indexed_once() -> None:
    async def go() -> None:
        server = fakeredis.FakeServer()
        settings = Settings(prefix="ev", partitions=2, block_ms=0, claim_idle_ms=0)
        pr = Projector(fakeredis.FakeAsyncRedis(server=server), settings)
        await pr.prepare()
        keys = Keys("ev", 2)
        await pr.redis.xadd(keys.events, {"type": "x.y", "data": b'{"a":1}', "correlation_id": "c9"})
        await pr.redis.xadd(keys.events, {"type": "x.z", "data": b'{}'})
        assert pr.events_reader is not None
        entries = await pr.events_reader.read(10, None)
        await pr.apply_events(entries)
        await pr.apply_events(entries)  # redelivered: nothing new
        members = await pr.redis.zrange(ViewKeys(keys).correlation_events("c9"), 0, -1)
        assert len(members) == 1 and orjson.loads(members[0])["data"] == {"a": 1}
        assert (await pr.redis.xpending(keys.events, group_name("correlation")))["pending"] == 0

    asyncio.run(go())
