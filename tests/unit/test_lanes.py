"""Priority lanes (issue 16): a task of an instance with priority n > 0 goes to its queue's lane
``{ff:p}:tasks:<queue>:p<n>``, which append.lua registers in ``{ff:p}:lanes`` with the activity
group; activity workers read lanes first and run a read's entries highest lane first.
Pure code and fakeredis (the real stack: tests/e2e/test_lanes.py)."""

from __future__ import annotations

from typing import Any

import fakeredis
import orjson
import pytest
import redis.asyncio as aioredis

from engine.core.definition import DefinitionError
from engine.core.definition.parser import parse_definition
from engine.core.model import INITIAL, Event, StepScheduled, WorkflowCreated, WorkflowStarted
from engine.runtime.consume import Entry, GroupReader
from engine.store.dlq import replay_target_ok
from engine.store.events import AppendRequest, Store
from engine.store.inventory import partition_lag, task_streams
from engine.store.keys import ACTIVITY_GROUP, ENGINE_GROUP, Keys
from engine.store.plan import Effects, plan
from engine.store.replies import text
from engine.workers.lanes import Lanes, by_priority
from tests.support.poll import run

KEYS = Keys("ff", 8)
TS = 1_700_000_000_000


def created(priority: int) -> WorkflowCreated:
    return WorkflowCreated(instance_id="i-1", workflow="wf", version="1", priority=priority)


def scheduled(queue: str = "billing", attempt: int = 1) -> StepScheduled:
    return StepScheduled(step="charge", attempt=attempt, task_id=f"t-{attempt}", queue=queue)


# -- keys -------------------------------------------------------------------
def test_lane_keys_and_their_parse() -> None:
    assert KEYS.tasks(3, "billing") == KEYS.tasks(3, "billing", 0) == "{ff:3}:tasks:billing"
    assert KEYS.tasks(3, "billing", 9) == "{ff:3}:tasks:billing:p9"
    assert KEYS.lanes(3) == "{ff:3}:lanes"
    assert KEYS.lane_of("{ff:3}:tasks:billing:p9") == ("billing", 9)
    assert KEYS.lane_of("{ff:3}:tasks:a:b:p1") == ("a:b", 1)
    assert KEYS.lane_of("{ff:3}:tasks:billing") == ("billing", 0)
    assert KEYS.lane_of("{ff:3}:tasks:billing:p0") == ("billing:p0", 0)  # no lane 0: a queue of that name


def test_a_service_named_like_a_lane_is_refused_at_registration() -> None:
    def doc(service: str) -> dict[str, Any]:
        return {"name": "w", "version": "1", "definition": {"steps": [
            {"name": "s", "type": "service_call", "service": service}]}}
    with pytest.raises(DefinitionError, match=r"'billing:p3' ends like a priority lane"):
        parse_definition(doc("billing:p3"))
    assert parse_definition(doc("billing:p0")).steps[0].service == "billing:p0"
    assert parse_definition(doc("billing:v2")).steps[0].service == "billing:v2"


def test_a_dead_letter_from_a_lane_is_replayable() -> None:
    assert replay_target_ok(KEYS, "{ff:2}:tasks:billing:p7")
    assert not replay_target_ok(KEYS, "{ff:9}:tasks:billing:p7")


# -- plan -------------------------------------------------------------------
def test_a_priority_task_goes_to_its_lane_and_is_registered() -> None:
    fx = plan(INITIAL, [created(9), WorkflowStarted(), scheduled()], KEYS, 3)
    [(key, task_id, step, attempt, data)] = fx.tasks
    assert (key, task_id, step, attempt) == ("{ff:3}:tasks:billing:p9", "t-1", "charge", 1)
    assert orjson.loads(data)["service"] == "billing"
    assert fx.lanes == {"{ff:3}:tasks:billing:p9": 9}


def test_priority_zero_keeps_the_base_stream_and_registers_nothing() -> None:
    fx = plan(INITIAL, [created(0), WorkflowStarted(), scheduled()], KEYS, 3)
    assert [t[0] for t in fx.tasks] == ["{ff:3}:tasks:billing"]
    assert fx.lanes == {}


def test_a_later_task_takes_the_priority_from_the_state() -> None:
    from engine.core.evolve import evolve
    state = INITIAL
    for e in (created(4), WorkflowStarted()):
        state = evolve(state, e)
    fx = plan(state, [scheduled(attempt=2)], KEYS, 1)
    assert [t[0] for t in fx.tasks] == ["{ff:1}:tasks:billing:p4"] and fx.lanes == {"{ff:1}:tasks:billing:p4": 4}


def test_a_raw_start_out_of_range_is_clamped_to_the_lanes_there_are() -> None:
    assert [t[0] for t in plan(INITIAL, [created(42), scheduled()], KEYS, 0).tasks] == ["{ff:0}:tasks:billing:p9"]
    assert [t[0] for t in plan(INITIAL, [created(-3), scheduled()], KEYS, 0).tasks] == ["{ff:0}:tasks:billing"]


# -- ordering ---------------------------------------------------------------
def test_a_read_runs_highest_lane_first_oldest_first_within_a_lane() -> None:
    lanes = {"{ff:0}:tasks:q:p9": 9, "{ff:1}:tasks:q:p9": 9, "{ff:0}:tasks:q:p2": 2}
    entries: list[Entry] = [
        ("{ff:0}:tasks:q", "5-0", {}), ("{ff:0}:tasks:q:p2", "1-0", {}), ("{ff:1}:tasks:q:p9", "4-0", {}),
        ("{ff:0}:tasks:q:p9", "3-0", {}), ("{ff:1}:tasks:q", "2-0", {}), ("{ff:0}:tasks:q:p9", "6-0", {}),
    ]
    assert [(s.split(":tasks:")[1], i) for s, i, _ in by_priority(entries, lanes)] == [
        ("q:p9", "3-0"), ("q:p9", "4-0"), ("q:p9", "6-0"), ("q:p2", "1-0"), ("q", "2-0"), ("q", "5-0")]


# -- the append script and the worker's reads, on fakeredis ------------------
async def _append(store: Store, iid: str, events: list[Event], fx: Effects, expected: int = 0) -> None:
    p = store.keys.partition(iid)
    inbox = store.keys.inbox(p)
    await store.ensure_group(inbox, ENGINE_GROUP)
    eid = await store.redis.xadd(inbox, {"type": "start", "id": iid, "data": b"{}"})
    await store.redis.xreadgroup(ENGINE_GROUP, "c1", {inbox: ">"}, count=100)
    [result] = await store.append_many([AppendRequest(iid, p, expected, [text(eid)], events, fx, TS)],
                                       ENGINE_GROUP, "c1")
    assert result.outcome.name == "OK", result


async def _lane_task(store: Store, iid: str, priority: int, queue: str = "billing") -> str:
    events: list[Event] = [WorkflowCreated(instance_id=iid, workflow="wf", version="1", priority=priority),
                           WorkflowStarted(), scheduled(queue)]
    fx = plan(INITIAL, events, store.keys, store.keys.partition(iid))
    await store.load_scripts()
    await _append(store, iid, events, fx)
    return fx.tasks[0][0]


def _fake() -> aioredis.Redis:
    return fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())


def test_one_append_registers_the_lane_with_its_group_before_the_task() -> None:
    async def go() -> None:
        r = _fake()
        store = Store(r, Keys("t", 4))
        lane = await _lane_task(store, "i-1", 7)
        p = store.keys.partition("i-1")
        assert lane == store.keys.tasks(p, "billing", 7)
        assert {text(m) for m in await r.smembers(store.keys.lanes(p))} == {lane}
        assert [g["name"] for g in await r.xinfo_groups(lane)] == [ACTIVITY_GROUP.encode()]
        rows: Any = await r.xrange(lane)
        [(_, fields)] = rows
        assert fields[b"priority"] == b"7" and fields[b"id"] == b"i-1" and fields[b"reply_to"] == store.keys.inbox(p).encode()
        # the group was made at 0: the first task is delivered
        reply: Any = await r.xreadgroup(ACTIVITY_GROUP, "a1", {lane: ">"}, count=10)
        assert [len(entries) for _, entries in reply] == [1]
        # a second task of the lane: the lane is known, the group stays, nothing fails
        twin = next(f"i-1-{n}" for n in range(100) if store.keys.partition(f"i-1-{n}") == p)
        assert await _lane_task(store, twin, 7) == lane
        assert await r.scard(store.keys.lanes(p)) == 1 and await r.xlen(lane) == 2
        # priority 0: no lanes key touched, the base stream as before
        other = next(f"i-2-{n}" for n in range(100) if store.keys.partition(f"i-2-{n}") != p)
        base = await _lane_task(store, other, 0)
        assert base == store.keys.tasks(store.keys.partition(other), "billing")
        assert await r.exists(store.keys.lanes(store.keys.partition(other))) == 0
        await r.aclose()
    run(go())


def test_a_worker_finds_the_lanes_of_its_queues_and_reads_them_first() -> None:
    async def go() -> None:
        r = _fake()
        keys = Keys("t", 4)
        store = Store(r, keys)
        base = [keys.tasks(p, "billing") for p in range(4)]
        for s in base:
            await store.ensure_group(s, ACTIVITY_GROUP)
        for i in range(6):
            await _lane_task(store, f"low-{i}", 0)
        hi = await _lane_task(store, "high-1", 9)
        mid = await _lane_task(store, "mid-1", 3)
        other = await _lane_task(store, "other-1", 9, queue="shipping")
        reader = GroupReader(r, ACTIVITY_GROUP, "a1", base)
        lanes = Lanes(r, keys, reader)
        assert await lanes.refresh(["billing"]) == sorted([hi, mid])
        assert other not in reader.streams and set(reader.streams) == {*base, hi, mid}
        assert await lanes.refresh(["billing"]) == []  # nothing new
        first = await lanes.read(10, 50)
        assert [(e[0], e[2][b"id"]) for e in first] == [(hi, b"high-1"), (mid, b"mid-1")]  # lanes alone
        second = await lanes.read(10, 50)
        assert sorted(e[2][b"id"] for e in second) == [f"low-{i}".encode() for i in range(6)]
        lanes.set_base(base, ["shipping"])  # the queues served changed: billing's lanes go
        assert reader.streams == base
        await r.aclose()
    run(go())


def test_operator_views_count_a_lane_with_its_queue() -> None:
    async def go() -> None:
        r = _fake()
        keys = Keys("t", 4)
        store = Store(r, keys)
        lane = await _lane_task(store, "high-1", 9)
        await _lane_task(store, "high-2", 9)
        p = keys.stream_partition(lane)
        await store.ensure_group(keys.tasks(p, "billing"), ACTIVITY_GROUP)
        found = await task_streams(r, keys)
        assert found[lane] == (p, "billing")
        lag = await partition_lag(r, keys, queues=["billing"])
        total = sum(n for (g, _, q), (n, _) in lag.items() if g == ACTIVITY_GROUP and q == "billing")
        assert total == 2 and not any(q.endswith(":p9") for _, _, q in lag)
        await r.aclose()
    run(go())


def test_a_sub_workflow_starts_with_its_parents_priority() -> None:
    from engine.core.model import ChildStarted
    child = ChildStarted(step="kid", attempt=1, child_id="c-1", workflow="child")
    [(_, urgent)] = plan(INITIAL, [created(6), WorkflowStarted(), child], KEYS, 0).outbox
    [(_, plain)] = plan(INITIAL, [created(0), WorkflowStarted(), child], KEYS, 0).outbox
    assert orjson.loads(urgent["data"])["priority"] == 6
    assert "priority" not in orjson.loads(plain["data"])
