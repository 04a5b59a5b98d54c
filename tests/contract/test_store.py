"""The store contract: one suite, run on fakeredis[lua] and on a real redis-server.

Every test builds its own clients from the ``backend`` factory inside its own
event loop (``run``) and its own key prefix, so tests never share state. Real
Redis is the reference: where fakeredis diverges, its param is skipped with the
fakeredis issue named; an assertion is never weakened for real Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import fakeredis
import orjson
import pytest
import redis.asyncio as aioredis

from engine.core.definition import version_sort_key
from engine.core.model import (
    INITIAL,
    CommandRejected,
    Event,
    State,
    WorkflowCreated,
    WorkflowStarted,
    decode_event,
    encode,
)
from engine.errors import ConfigError, DefinitionConflict
from engine.runtime.consume import GroupReader
from engine.store.events import AppendOutcome, AppendRequest, AppendResult, Store
from engine.store.keys import ACTIVITY_GROUP, ENGINE_GROUP, Keys
from engine.store.plan import Effects, timer_member, wait_member
from tests.support.poll import eventually, run

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 4
TS = 1_700_000_000_000


# --------------------------------------------------------------------------
# backends
# --------------------------------------------------------------------------
class Backend:
    """Makes async clients that all talk to one server (a FakeServer or a redis-server)."""

    def __init__(self, kind: str, make: Callable[[], aioredis.Redis], url: str | None = None) -> None:
        self.kind = kind
        self.url = url
        self._make = make

    @property
    def real(self) -> bool:
        return self.kind == "redis"

    def __call__(self) -> aioredis.Redis:
        return self._make()


@pytest.fixture(params=["fake", pytest.param("redis", marks=pytest.mark.redis)])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "fake":
        server = fakeredis.FakeServer()
        return Backend("fake", lambda: fakeredis.FakeAsyncRedis(server=server))
    url: str = request.getfixturevalue("redis_url")
    return Backend("redis", lambda: aioredis.Redis.from_url(url), url)


def skip_on_fake(backend: Backend, reason: str) -> None:
    if backend.kind == "fake":
        pytest.skip(f"fakeredis diverges: {reason}")


@contextlib.asynccontextmanager
async def opened(backend: Backend, prefix: str, partitions: int = PARTITIONS) -> AsyncIterator[tuple[aioredis.Redis, Store]]:
    r = backend()
    try:
        yield r, Store(r, Keys(prefix, partitions))
    finally:
        await r.aclose()


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


async def deliver(r: aioredis.Redis, store: Store, p: int, iid: str, consumer: str = "c1") -> str:
    """XADD one command to the partition inbox and read it as `consumer`, so it is pending for it."""
    inbox = store.keys.inbox(p)
    await store.ensure_group(inbox, ENGINE_GROUP)
    eid = s(await r.xadd(inbox, {"type": "start", "id": iid, "data": b'{"type":"start","workflow":"wf"}'}))
    reply = await r.xreadgroup(ENGINE_GROUP, consumer, {inbox: ">"}, count=100)
    read = [s(e) for _, entries in reply for e, _ in entries]
    assert eid in read
    return eid


async def owner(r: aioredis.Redis, stream: str, group: str, eid: str) -> str | None:
    """The consumer an entry is pending for, or None when it is not pending."""
    rows = await r.xpending_range(stream, group, min=eid, max=eid, count=1)
    return s(rows[0]["consumer"]) if rows else None


async def lengths(r: aioredis.Redis, *keys: str) -> list[int]:
    out = []
    for k in keys:
        t = s(await r.type(k))
        if t == "stream":
            out.append(await r.xlen(k))
        elif t == "zset":
            out.append(await r.zcard(k))
        elif t == "set":
            out.append(await r.scard(k))
        else:
            assert t == "none", (k, t)
            out.append(0)
    return out


def req(
    iid: str, p: int, expected: int, entry_ids: list[str], events: list[Event], effects: Effects | None = None
) -> AppendRequest:
    return AppendRequest(iid, p, expected, entry_ids, events, effects or Effects(), TS)


async def append1(store: Store, r_: AppendRequest, consumer: str = "c1", fenced: bool = False) -> AppendResult:
    [result] = await store.append_many([r_], ENGINE_GROUP, consumer, fenced=fenced)
    return result


def decoded(fields: dict[bytes, bytes]) -> dict[str, str]:
    return {s(k): s(v) for k, v in fields.items()}


# --------------------------------------------------------------------------
# deployment metadata
# --------------------------------------------------------------------------
def test_check_meta_records_partitions_and_refuses_another_count(backend: Backend, prefix: str) -> None:
    async def go() -> None:
        async with opened(backend, prefix, 4) as (r, store):
            await store.check_meta()
            assert await r.hget(f"{prefix}:meta", "partitions") == b"4"
            await store.check_meta()  # same count again: fine
            with pytest.raises(ConfigError):
                await Store(r, Keys(prefix, 8)).check_meta()
            assert await r.hget(f"{prefix}:meta", "partitions") == b"4"

    run(go())


# --------------------------------------------------------------------------
# append
# --------------------------------------------------------------------------
def test_first_append_writes_events_feed_effects_and_acks(backend: Backend, prefix: str) -> None:
    async def go() -> None:
        async with opened(backend, prefix) as (r, store):
            k = store.keys
            iid = "order-1"
            p = k.partition(iid)
            eid = await deliver(r, store, p, iid)
            events: list[Event] = [
                WorkflowCreated(instance_id=iid, workflow="wf", version="1.0.0", context={"a": 1}),
                WorkflowStarted(),
            ]
            fx = Effects()
            task_key = k.tasks(p, "billing")
            fx.tasks.append((task_key, "task-1", "charge", 1, b'{"service":"billing"}'))
            member = timer_member(iid, "timeout", "charge", 1)
            fx.timers_add.append((TS + 60_000, member))
            wait_key = k.wait_index(p, "paid", ("order",), ["order-1"])
            fx.sadd.append((wait_key, wait_member(iid, "pay", 1)))

            result = await append1(store, req(iid, p, 0, [eid], events, fx))

            assert result.outcome == AppendOutcome.OK
            assert result.version == 2
            stream = await r.xrange(k.instance(iid))
            assert [decoded(f) for _, f in stream] == [
                {"type": "workflow.created", "version": "1", "ts": str(TS), "data": s(encode(events[0]))},
                {"type": "workflow.started", "version": "2", "ts": str(TS), "data": s(encode(events[1]))},
            ]
            assert [decode_event(f[b"data"]) for _, f in stream] == events
            assert result.last_id == s(stream[-1][0])

            feed = await r.xrange(k.feed(p))
            assert [decoded(f) for _, f in feed] == [{**decoded(f), "id": iid} for _, f in stream]

            tasks = await r.xrange(task_key)
            assert [decoded(f) for _, f in tasks] == [{
                "task_id": "task-1", "id": iid, "step": "charge", "attempt": "1",
                "reply_to": k.inbox(p), "data": '{"service":"billing"}',
            }]
            assert await r.zrange(k.timers(p), 0, -1, withscores=True) == [(member.encode(), TS + 60_000)]
            assert await r.smembers(wait_key) == {wait_member(iid, "pay", 1).encode()}

            assert await owner(r, k.inbox(p), ENGINE_GROUP, eid) is None  # acked
            assert await r.xlen(k.inbox(p)) == 1  # acked, not deleted

            # the disarming ops of a later decision: ZREM and SREM
            fx2 = Effects()
            fx2.timers_rem.append(member)
            fx2.srem.append((wait_key, wait_member(iid, "pay", 1)))
            eid2 = await deliver(r, store, p, iid)
            result = await append1(store, req(iid, p, 2, [eid2], [CommandRejected(command="x", reason="y")], fx2))
            assert (result.outcome, result.version) == (AppendOutcome.OK, 3)
            assert await r.zcard(k.timers(p)) == 0
            assert await r.scard(wait_key) == 0
            assert await owner(r, k.inbox(p), ENGINE_GROUP, eid2) is None
            assert (await store.load(iid)).version == 3

    run(go())


def test_stale_expected_version_conflicts_and_writes_nothing(backend: Backend, prefix: str) -> None:
    async def go() -> None:
        async with opened(backend, prefix) as (r, store):
            k = store.keys
            iid = "order-2"
            p = k.partition(iid)
            first = await deliver(r, store, p, iid)
            assert (await append1(store, req(iid, p, 0, [first], [WorkflowStarted(), WorkflowStarted()]))).outcome == AppendOutcome.OK

            eid = await deliver(r, store, p, iid)
            fx = Effects()
            task_key = k.tasks(p, "q")
            wait_key = f"{k.tag(p)}:wait:x"
            fx.tasks.append((task_key, "t", "s", 1, b"{}"))
            fx.timers_add.append((TS, timer_member(iid, "retry", "s", 1)))
            fx.sadd.append((wait_key, "m"))
            watched = [k.instance(iid), k.feed(p), task_key, k.timers(p), wait_key]
            before = await lengths(r, *watched)
            for stale in (0, 1, 3, 7):
                result = await append1(store, req(iid, p, stale, [eid], [WorkflowStarted()], fx))
                assert (result.outcome, result.version) == (AppendOutcome.CONFLICT, 2), stale
                assert await lengths(r, *watched) == before
                assert await owner(r, k.inbox(p), ENGINE_GROUP, eid) == "c1"

    run(go())


def test_same_version_with_another_last_entry_conflicts(backend: Backend, prefix: str) -> None:
    """After lost writes a stream can be back at the expected version with other
    events; the last entry id the decision saw tells them apart."""
    async def go() -> None:
        async with opened(backend, prefix) as (r, store):
            k = store.keys
            iid = "order-lost"
            p = k.partition(iid)
            eid = await deliver(r, store, p, iid)
            seen = await append1(store, req(iid, p, 0, [], [WorkflowStarted(), WorkflowStarted()]))
            assert seen.outcome == AppendOutcome.OK
            # the tail is lost, and another decision brings the stream back to version 2
            await r.xdel(k.instance(iid), seen.last_id)
            other = await append1(store, req(iid, p, 1, [], [CommandRejected(command="x", reason="elsewhere")]))
            assert (other.outcome, other.version) == (AppendOutcome.OK, 2) and other.last_id != seen.last_id

            watched = [k.instance(iid), k.feed(p)]
            before = await lengths(r, *watched)
            stale = req(iid, p, 2, [eid], [WorkflowStarted()])
            stale.expected_last = seen.last_id
            result = await append1(store, stale)
            assert (result.outcome, result.version, result.last_id) == (AppendOutcome.CONFLICT, 2, other.last_id)
            assert await lengths(r, *watched) == before
            assert await owner(r, k.inbox(p), ENGINE_GROUP, eid) == "c1"

            fresh = req(iid, p, 2, [eid], [WorkflowStarted()])
            fresh.expected_last = other.last_id
            assert (await append1(store, fresh)).outcome == AppendOutcome.OK
            assert await owner(r, k.inbox(p), ENGINE_GROUP, eid) is None

    run(go())


def test_append_refuses_entries_that_are_not_ours(backend: Backend, prefix: str) -> None:
    async def go() -> None:
        async with opened(backend, prefix) as (r, store):
            k = store.keys
            iid = "order-3"
            p = k.partition(iid)
            inbox = k.inbox(p)
            claimed = await deliver(r, store, p, iid)
            # c1 stalls; its entry is reclaimed by c2.
            assert len(await r.xclaim(inbox, ENGINE_GROUP, "c2", 0, [claimed])) == 1
            acked = await deliver(r, store, p, iid)
            await r.xack(inbox, ENGINE_GROUP, acked)
            mine = await deliver(r, store, p, iid)
            fx = Effects()
            fx.timers_add.append((TS, timer_member(iid, "retry", "s", 1)))
            watched = [k.instance(iid), k.feed(p), k.timers(p)]

            for ids, refused in (([claimed], claimed), ([acked], acked), ([mine, claimed], claimed)):
                result = await append1(store, req(iid, p, 0, ids, [WorkflowStarted()], fx))
                assert (result.outcome, result.entry_id) == (AppendOutcome.NOT_OWNER, refused), ids
                assert await lengths(r, *watched) == [0, 0, 0]
                # the late append never acks the new owner's entry, nor any of ours
                assert await owner(r, inbox, ENGINE_GROUP, claimed) == "c2"
                assert await owner(r, inbox, ENGINE_GROUP, mine) == "c1"

            # the new owner's append goes through
            result = await append1(store, req(iid, p, 0, [claimed], [WorkflowStarted()]), consumer="c2")
            assert (result.outcome, result.version) == (AppendOutcome.OK, 1)
            assert await owner(r, inbox, ENGINE_GROUP, claimed) is None

    run(go())


def test_zero_event_append_only_acks_and_still_checks_the_version(backend: Backend, prefix: str) -> None:
    async def go() -> None:
        async with opened(backend, prefix) as (r, store):
            k = store.keys
            iid = "order-4"
            p = k.partition(iid)
            first = await deliver(r, store, p, iid)
            assert (await append1(store, req(iid, p, 0, [first], [WorkflowStarted()]))).version == 1

            eid = await deliver(r, store, p, iid)
            result = await append1(store, req(iid, p, 0, [eid], []))
            assert (result.outcome, result.version) == (AppendOutcome.CONFLICT, 1)
            assert await owner(r, k.inbox(p), ENGINE_GROUP, eid) == "c1"

            result = await append1(store, req(iid, p, 1, [eid], []))
            assert (result.outcome, result.version) == (AppendOutcome.OK, 1)
            assert await owner(r, k.inbox(p), ENGINE_GROUP, eid) is None
            assert await lengths(r, k.instance(iid), k.feed(p)) == [1, 1]

    run(go())


def test_append_many_answers_each_request_in_order(backend: Backend, prefix: str) -> None:
    async def go() -> None:
        async with opened(backend, prefix) as (r, store):
            k = store.keys
            a, b = "many-a", "many-b"
            results = await store.append_many(
                [req(a, k.partition(a), 0, [], [WorkflowStarted()]),
                 req(b, k.partition(b), 3, [], [WorkflowStarted()]),
                 req(a, k.partition(a), 1, [], [WorkflowStarted(), WorkflowStarted()])],
                ENGINE_GROUP, "c1",
            )
            assert [(x.outcome, x.version) for x in results] == [(AppendOutcome.OK, 1), (AppendOutcome.CONFLICT, 0), (AppendOutcome.OK, 3)]
            assert await lengths(r, k.instance(a), k.instance(b)) == [3, 0]

    run(go())


def test_one_call_per_partition_applies_each_decision_on_its_own(backend: Backend, prefix: str) -> None:
    """Three instances of one partition in one append.lua call: the refused one in the middle
    writes nothing; the first empties the timer set and a wait set, the last adds to both
    (append.lua removes last, so nothing it needs is deleted under it: see its header)."""
    async def go() -> None:
        async with opened(backend, prefix) as (r, store):
            k = store.keys
            ids = [f"same-p-{i}" for i in range(64)]
            p = k.partition(ids[0])
            x, y, z = [i for i in ids if k.partition(i) == p][:3]
            wait_key = f"{k.tag(p)}:wait:w"
            setup = Effects()
            setup.timers_add.append((TS, timer_member(x, "retry", "s", 1)))
            setup.sadd.append((wait_key, wait_member(x, "s", 1)))
            assert (await append1(store, req(x, p, 0, [], [WorkflowStarted()], setup))).outcome == AppendOutcome.OK
            eid = await deliver(r, store, p, y)
            first, last = Effects(), Effects()
            first.timers_rem.append(timer_member(x, "retry", "s", 1))
            first.srem.append((wait_key, wait_member(x, "s", 1)))
            last.timers_add.append((TS + 1, timer_member(z, "retry", "s", 1)))
            last.sadd.append((wait_key, wait_member(z, "s", 1)))
            results = await store.append_many(
                [req(x, p, 1, [], [WorkflowStarted()], first),
                 req(y, p, 5, [eid], [WorkflowStarted()]),  # stale: refused, its entry stays pending
                 req(z, p, 0, [], [WorkflowStarted()], last)],
                ENGINE_GROUP, "c1")
            assert [(res.outcome, res.version) for res in results] == [(AppendOutcome.OK, 2), (AppendOutcome.CONFLICT, 0), (AppendOutcome.OK, 1)]
            assert [s(m) for m in await r.zrange(k.timers(p), 0, -1)] == [timer_member(z, "retry", "s", 1)]
            assert {s(m) for m in await r.smembers(wait_key)} == {wait_member(z, "s", 1)}
            assert await lengths(r, k.instance(x), k.instance(y), k.instance(z)) == [2, 0, 1]
            assert await owner(r, k.inbox(p), ENGINE_GROUP, eid) == "c1"

    run(go())


def test_fenced_append_needs_the_partition_lease(backend: Backend, prefix: str) -> None:
    async def go() -> None:
        async with opened(backend, prefix) as (r, store):
            k = store.keys
            iid = "fenced"
            p = k.partition(iid)
            eid = await deliver(r, store, p, iid)
            fx = Effects()
            fx.timers_add.append((TS, timer_member(iid, "retry", "s", 1)))
            watched = [k.instance(iid), k.feed(p), k.timers(p)]

            # no lease at all, then someone else's lease: refused, nothing written, entry not acked
            result = await append1(store, req(iid, p, 0, [eid], [WorkflowStarted()], fx), fenced=True)
            assert (result.outcome, result.holder) == (AppendOutcome.FENCED, None)
            assert await store.leases("acquire", [p], "c2", 60_000) == [True]
            assert await store.leases("acquire", [p], "c1", 60_000) == [False]
            result = await append1(store, req(iid, p, 0, [eid], [WorkflowStarted()], fx), fenced=True)
            assert (result.outcome, result.holder) == (AppendOutcome.FENCED, "c2")
            assert await lengths(r, *watched) == [0, 0, 0]
            assert await owner(r, k.inbox(p), ENGINE_GROUP, eid) == "c1"

            assert await store.leases("release", [p], "c1", 0) == [False]  # not c1's to release
            assert await store.leases("release", [p], "c2", 0) == [True]
            assert await store.leases("acquire", [p], "c1", 60_000) == [True]
            result = await append1(store, req(iid, p, 0, [eid], [WorkflowStarted()], fx), fenced=True)
            assert (result.outcome, result.version) == (AppendOutcome.OK, 1)
            assert await owner(r, k.inbox(p), ENGINE_GROUP, eid) is None

    run(go())


# --------------------------------------------------------------------------
# concurrent writers
# --------------------------------------------------------------------------
async def writer_loop(store: Store, iid: str, name: str, n: int) -> int:
    """n times: catch up with the stream, append one event at that version, retry on CONFLICT.

    Returns how many conflicts it met. Used by in-process tasks and by the
    subprocess writers alike, so both follow the same protocol.
    """
    p = store.keys.partition(iid)
    state: State = INITIAL
    last: str | None = None
    conflicts = 0
    for i in range(n):
        while True:
            [loaded] = await store.load_many([(iid, state, last)])
            assert not isinstance(loaded, Exception), loaded
            state, last = loaded
            event = CommandRejected(command="x", reason=f"{name}:{i}")
            [result] = await store.append_many([req(iid, p, state.version, [], [event])], ENGINE_GROUP, name)
            if result.outcome == AppendOutcome.OK:
                assert result.version == state.version + 1
                break
            assert result.outcome == AppendOutcome.CONFLICT
            assert result.version > state.version
            conflicts += 1
    return conflicts


_SUBPROCESS_WRITER = """
import asyncio, sys
sys.path.insert(0, sys.argv[1])
import redis.asyncio as aioredis
from engine.store.keys import Keys
from engine.store.events import Store
from tests.contract.test_store import PARTITIONS, writer_loop

async def main(url, prefix, iid, name, n):
    r = aioredis.Redis.from_url(url)
    await r.incr(prefix + ":ready")
    while not await r.exists(prefix + ":go"):
        await asyncio.sleep(0.002)
    await writer_loop(Store(r, Keys(prefix, PARTITIONS)), iid, name, n)
    await r.aclose()

asyncio.run(main(*sys.argv[2:6], int(sys.argv[6])))
"""


def test_concurrent_writers_produce_one_contiguous_history(backend: Backend, prefix: str) -> None:
    tasks_n, procs_n, each = 20, (4 if backend.real else 0), 25

    async def go() -> None:
        async with opened(backend, prefix) as (r, store):
            k = store.keys
            iid = "contended"
            procs = [
                await asyncio.create_subprocess_exec(
                    sys.executable, "-c", _SUBPROCESS_WRITER, str(ROOT), backend.url or "", prefix, iid,
                    f"proc{j}", str(each), stderr=asyncio.subprocess.PIPE,
                )
                for j in range(procs_n)
            ]
            clients = [backend() for _ in range(4)]
            try:
                if procs_n:
                    await eventually(lambda: _ready(r, prefix, procs_n), timeout=20)
                    await r.set(f"{prefix}:go", 1)
                conflicts = await asyncio.gather(*(
                    writer_loop(Store(clients[j % 4], k), iid, f"task{j}", each) for j in range(tasks_n)
                ))
                for proc in procs:
                    _, err = await proc.communicate()
                    assert proc.returncode == 0, err.decode()
            finally:
                for proc in procs:
                    if proc.returncode is None:
                        proc.kill()
                        await proc.wait()
                for c in clients:
                    await c.aclose()

            total = (tasks_n + procs_n) * each
            assert sum(conflicts) > 0  # the writers really did race
            stream = await r.xrange(k.instance(iid))
            assert [int(f[b"version"]) for _, f in stream] == list(range(1, total + 1))
            reasons = [orjson.loads(f[b"data"])["reason"] for _, f in stream]
            names = [f"task{j}" for j in range(tasks_n)] + [f"proc{j}" for j in range(procs_n)]
            assert sorted(reasons) == sorted(f"{n}:{i}" for n in names for i in range(each))
            # each writer's own events land in its order
            for n in names:
                assert [x for x in reasons if x.startswith(n + ":")] == [f"{n}:{i}" for i in range(each)]
            feed = await r.xrange(k.feed(k.partition(iid)))
            assert [(int(f[b"version"]), f[b"data"]) for _, f in feed] == [
                (int(f[b"version"]), f[b"data"]) for _, f in stream
            ]
            assert (await store.load(iid)).version == total

    run(go())


async def _ready(r: aioredis.Redis, prefix: str, n: int) -> bool:
    return int(await r.get(f"{prefix}:ready") or 0) >= n


# --------------------------------------------------------------------------
# timers
# --------------------------------------------------------------------------
def test_fire_timers_moves_each_due_timer_exactly_once(backend: Backend, prefix: str) -> None:
    async def go() -> None:
        async with opened(backend, prefix) as (r, store):
            k = store.keys
            now_s, now_us = await r.time()
            now_ms = now_s * 1000 + now_us // 1000
            due: dict[str, tuple[int, str]] = {}
            for i in range(60):
                iid = f"timer-{i}"
                p = k.partition(iid)
                member = timer_member(iid, "retry", f"step{i % 3}", i)
                due[member] = (p, iid)
                await r.zadd(k.timers(p), {member: now_ms - 1_000 - i})
            later_iid = "timer-later"
            later_p = k.partition(later_iid)
            later = timer_member(later_iid, "timeout", "s", 1)
            later_score = now_ms + 3_600_000
            await r.zadd(k.timers(later_p), {later: later_score})
            bad_p = (later_p + 1) % PARTITIONS
            malformed = "not\na foldflow timer"
            await r.zadd(k.timers(bad_p), {malformed: now_ms - 5})

            async def poller() -> int:
                moved = 0
                async with opened(backend, prefix) as (_, st):
                    for _ in range(100):  # 61 due timers, 3 per partition per call: ~6 calls
                        results = await st.fire_timers(limit=3)
                        n = sum(m for m, _ in results)
                        if n == 0:
                            return moved
                        moved += n
                raise AssertionError(f"fire_timers kept moving timers ({moved} so far): are they removed?")

            moved = await asyncio.gather(*(poller() for _ in range(5)))
            assert sum(moved) == len(due) + 1

            fired: list[tuple[int, dict[str, str]]] = []
            for p in range(PARTITIONS):
                fired += [(p, decoded(f)) for _, f in await r.xrange(k.inbox(p))]
            commands = [(p, f) for p, f in fired if f["type"] != "timer.malformed"]
            assert len(commands) == len(due)
            for p, f in commands:
                member = f"{f['cmd_id']}\n{f['type']}\n{f['id']}\n{f['data']}"
                assert set(f) == {"type", "id", "data", "cmd_id"}
                assert due[member] == (p, f["id"])
                assert f["type"] == "timer"
            assert {f"{f['cmd_id']}\n{f['type']}\n{f['id']}\n{f['data']}" for _, f in commands} == set(due)
            assert [(p, f) for p, f in fired if f["type"] == "timer.malformed"] == [
                (bad_p, {"type": "timer.malformed", "id": "", "data": malformed})
            ]

            for p in range(PARTITIONS):
                left = await r.zrange(k.timers(p), 0, -1)
                assert left == ([later.encode()] if p == later_p else [])
            results = await store.fire_timers()
            assert results[later_p] == (0, later_score)
            assert all(results[p] == (0, -1) for p in range(PARTITIONS) if p != later_p)

    run(go())


# --------------------------------------------------------------------------
# dead letters
# --------------------------------------------------------------------------
def test_dead_letter_moves_and_acks_only_our_entries(backend: Backend, prefix: str) -> None:
    async def go() -> None:
        async with opened(backend, prefix) as (r, store):
            k = store.keys
            iid = "poison"
            p = k.partition(iid)
            inbox, dlq = k.inbox(p), k.dlq(p)
            await store.ensure_group(inbox, ENGINE_GROUP)
            original = {b"type": b"start", b"id": iid.encode(), b"data": b"{not json", b"raw": b"\xff\xfe"}
            eid = s(await r.xadd(inbox, original))
            theirs = s(await r.xadd(inbox, original))
            await r.xreadgroup(ENGINE_GROUP, "c1", {inbox: ">"}, count=10)
            await r.xclaim(inbox, ENGINE_GROUP, "c2", 0, [theirs])

            await store.dead_letter_many(
                [(inbox, dlq, ENGINE_GROUP, eid, "undecodable", original, 3),
                 (inbox, dlq, ENGINE_GROUP, theirs, "undecodable", original, 3)],
                "c1", TS,
            )
            [(_, fields)] = await r.xrange(dlq)
            f = decoded(fields)
            assert orjson.loads(f.pop("fields")) == {
                "type": "start", "id": iid, "data": "{not json", "raw": repr(b"\xff\xfe"),
            }
            assert f == {
                "reason": "undecodable", "source": inbox, "entry_id": eid, "group": ENGINE_GROUP,
                "ts": str(TS), "deliveries": "3",
            }
            assert await owner(r, inbox, ENGINE_GROUP, eid) is None
            assert await owner(r, inbox, ENGINE_GROUP, theirs) == "c2"

            # already acked: refused too
            await store.dead_letter_many([(inbox, dlq, ENGINE_GROUP, eid, "again", original, 4)], "c1", TS)
            assert await r.xlen(dlq) == 1

    run(go())


def test_dead_letter_takes_entries_with_non_utf8_field_names(backend: Backend, prefix: str) -> None:
    """An entry a foreign producer wrote with a binary field name is exactly what the
    dead-letter path exists for: it must land in the dlq (and be acked), not raise."""

    async def go() -> None:
        async with opened(backend, prefix) as (r, store):
            k = store.keys
            inbox, dlq = k.inbox(0), k.dlq(0)
            await store.ensure_group(inbox, ENGINE_GROUP)
            original = {b"type": b"start", b"\xff\xfekey": b"value"}
            eid = s(await r.xadd(inbox, original))
            await r.xreadgroup(ENGINE_GROUP, "c1", {inbox: ">"}, count=10)
            await store.dead_letter_many([(inbox, dlq, ENGINE_GROUP, eid, "undecodable", original, 1)], "c1", TS)
            [(_, fields)] = await r.xrange(dlq)
            assert s(fields[b"entry_id"]) == eid
            kept = orjson.loads(fields[b"fields"])
            assert kept["type"] == "start" and len(kept) == 2 and "value" in kept.values()
            assert await owner(r, inbox, ENGINE_GROUP, eid) is None

    run(go())


# --------------------------------------------------------------------------
# tasks
# --------------------------------------------------------------------------
def test_complete_task_reports_once_and_only_for_the_owner(backend: Backend, prefix: str) -> None:
    async def go() -> None:
        async with opened(backend, prefix) as (r, store):
            k = store.keys
            iid = "tasked"
            p = k.partition(iid)
            task_key, inbox = k.tasks(p, "billing"), k.inbox(p)
            await store.ensure_group(task_key, ACTIVITY_GROUP)
            await store.ensure_group(inbox, ENGINE_GROUP)
            fx = Effects()
            fx.tasks.append((task_key, "task-1", "charge", 1, b"{}"))
            fx.tasks.append((task_key, "task-2", "refund", 1, b"{}"))
            assert (await append1(store, req(iid, p, 0, [], [WorkflowStarted()], fx))).outcome == AppendOutcome.OK
            reply = await r.xreadgroup(ACTIVITY_GROUP, "w1", {task_key: ">"}, count=10)
            (t1, f1), (t2, _) = reply[0][1]
            t1, t2 = s(t1), s(t2)
            assert s(f1[b"reply_to"]) == inbox

            def args(consumer: str, tid: str, cmd_id: str) -> list[Any]:
                data = orjson.dumps({"type": "step.completed", "step": "charge", "attempt": 1, "output": 7})
                return [ACTIVITY_GROUP, consumer, tid, "step.completed", iid, data, cmd_id]

            # a consumer that never received it is no owner
            assert int(await store.run("complete_task", [task_key, inbox], args("w9", t1, "c-x"))) == -1
            assert await r.xlen(inbox) == 0

            result = s(await store.run("complete_task", [task_key, inbox], args("w1", t1, "c-1")))
            [(rid, fields)] = await r.xrange(inbox)
            assert s(rid) == result
            assert decoded(fields) == {
                "type": "step.completed", "id": iid, "cmd_id": "c-1",
                "data": s(args("w1", t1, "c-1")[5]),
            }
            assert await owner(r, task_key, ACTIVITY_GROUP, t1) is None
            assert [s(e) for e, _ in await r.xrange(task_key)] == [t2]  # acked and deleted

            # w1 stalls on task-2; w2 reclaims it; w1's late report is dropped
            await r.xclaim(task_key, ACTIVITY_GROUP, "w2", 0, [t2])
            assert int(await store.run("complete_task", [task_key, inbox], args("w1", t2, "c-2"))) == -1
            assert await r.xlen(inbox) == 1
            assert await owner(r, task_key, ACTIVITY_GROUP, t2) == "w2"
            assert await r.xlen(task_key) == 1
            # and a repeat of the finished task is refused as well
            assert int(await store.run("complete_task", [task_key, inbox], args("w1", t1, "c-1"))) == -1
            assert await r.xlen(inbox) == 1

    run(go())


# --------------------------------------------------------------------------
# definitions
# --------------------------------------------------------------------------
def test_register_definition_is_immutable_and_tracks_latest(backend: Backend, prefix: str) -> None:
    async def go() -> None:
        async with opened(backend, prefix) as (r, store):
            async def register(name: str, version: str, body: bytes) -> bool:
                return await store.register_definition(name, version, body, version_sort_key(version))

            assert await register("wf", "1.10.0", b'{"v":10}') is True
            assert await register("wf", "1.10.0", b'{"v":10}') is False
            with pytest.raises(DefinitionConflict):
                await register("wf", "1.10.0", b'{"v":"other"}')
            assert await store.definition_body("wf", "1.10.0") == ("1.10.0", b'{"v":10}')

            assert await register("wf", "1.9.0", b'{"v":9}') is True  # older, registered later
            assert await store.definition_body("wf", None) == ("1.10.0", b'{"v":10}')
            assert await store.definition_body("wf", "1.9.0") == ("1.9.0", b'{"v":9}')

            assert await register("wf2", "1.9.0", b'{"v":9}') is True
            assert await register("wf2", "1.10.0", b'{"v":10}') is True
            assert await store.definition_body("wf2", None) == ("1.10.0", b'{"v":10}')
            assert await register("wf2", "2.0.0", b'{"v":20}') is True
            assert await store.definition_body("wf2", None) == ("2.0.0", b'{"v":20}')

            assert sorted(await store.definition_versions("wf")) == ["1.10.0", "1.9.0"]
            assert await r.smembers(store.keys.definitions_index) == {b"wf", b"wf2"}
            assert await store.definition_body("missing", None) is None
            assert await store.definition_body("wf", "3.0.0") is None

    run(go())


# --------------------------------------------------------------------------
# script cache
# --------------------------------------------------------------------------
def test_scripts_survive_script_flush(backend: Backend, prefix: str) -> None:
    async def go() -> None:
        async with opened(backend, prefix) as (r, store):
            k = store.keys
            await store.load_scripts()
            await r.script_flush()
            assert await store.register_definition("wf", "1", b"{}", version_sort_key("1")) is True

            await r.script_flush()
            a, b = "flush-a", "flush-b"
            results = await store.append_many(
                [req(a, k.partition(a), 0, [], [WorkflowStarted()]),
                 req(b, k.partition(b), 0, [], [WorkflowStarted(), WorkflowStarted()])],
                ENGINE_GROUP, "c1",
            )
            assert [(x.outcome, x.version) for x in results] == [(AppendOutcome.OK, 1), (AppendOutcome.OK, 2)]
            assert await lengths(r, k.instance(a), k.instance(b)) == [1, 2]

            await r.script_flush()
            assert await store.fire_timers() == [(0, -1)] * PARTITIONS

    run(go())


# --------------------------------------------------------------------------
# reclaiming
# --------------------------------------------------------------------------
def test_reclaim_carries_the_xautoclaim_cursor(backend: Backend, prefix: str) -> None:
    async def go() -> None:
        async with opened(backend, prefix) as (r, store):
            stream = store.keys.inbox(0)
            await store.ensure_group(stream, ENGINE_GROUP)
            pipe = r.pipeline(transaction=False)
            for i in range(2_500):
                pipe.xadd(stream, {"type": "start", "id": f"i{i}", "data": "{}"})
            ids = {s(x) for x in await pipe.execute()}
            reply = await r.xreadgroup(ENGINE_GROUP, "dead", {stream: ">"}, count=5_000)
            assert len(reply[0][1]) == 2_500  # pending for a consumer that will never ack

            reader = GroupReader(r, ENGINE_GROUP, "alive", [stream])
            claimed: dict[str, int] = {}
            for _ in range(60):  # 25 calls suffice when the cursor is carried
                for (name, eid, fields), deliveries in await reader.reclaim(min_idle_ms=0, count=100):
                    assert name == stream and fields[b"type"] == b"start"
                    claimed.setdefault(eid, deliveries)
                if len(claimed) == len(ids):
                    break
            assert set(claimed) == ids, f"{len(ids) - len(claimed)} pending entries never reclaimed"
            assert min(claimed.values()) >= 2
            rows = await r.xpending_range(stream, ENGINE_GROUP, min="-", max="+", count=10, consumername="dead")
            assert rows == []

    run(go())


def test_reclaim_reports_each_entrys_true_delivery_count(backend: Backend, prefix: str) -> None:
    """The worker dead-letters by delivery count, so the count must be the real one
    even when the claiming consumer has many young pending entries of its own
    between the idle ones it claims (here 10 own entries around each idle one)."""

    async def go() -> None:
        async with opened(backend, prefix) as (r, store):
            stream = store.keys.inbox(0)
            await store.ensure_group(stream, ENGINE_GROUP)
            pipe = r.pipeline(transaction=False)
            for i in range(1_100):
                pipe.xadd(stream, {"type": "start", "id": f"i{i}", "data": "{}"})
            ids = [s(x) for x in await pipe.execute()]
            await r.xreadgroup(ENGINE_GROUP, "dead", {stream: ">"}, count=5_000)
            idle = ids[::11]
            own = sorted(set(ids) - set(idle))
            # Knobs, not sleeps: the dead consumer's entries have been idle an hour and
            # delivered 5 times; the claimer's own entries were just delivered, once.
            await r.xclaim(stream, ENGINE_GROUP, "alive", 0, own, idle=0, retrycount=1)
            await r.xclaim(stream, ENGINE_GROUP, "dead", 0, idle, idle=3_600_000, retrycount=5)

            reader = GroupReader(r, ENGINE_GROUP, "alive", [stream])
            claimed = await reader.reclaim(min_idle_ms=60_000, count=100)
            assert claimed and {e[1] for e, _ in claimed} <= set(idle)
            truth = {
                s(row["message_id"]): int(row["times_delivered"])
                for row in await r.xpending_range(stream, ENGINE_GROUP, min="-", max="+", count=5_000,
                                                  consumername="alive")
            }
            wrong = [(e[1], n, truth[e[1]]) for e, n in claimed if n != truth[e[1]]]
            assert not wrong, f"{len(wrong)} of {len(claimed)} reported with a wrong count, e.g. {wrong[:3]}"
            assert all(n == 6 for _, n in claimed)

    run(go())
