"""Fast unit tests of the read side on fakeredis: the folds (given/when/then),
the version guard under a race, gap filling, poison entries, queries' bad
input and not-found answers, cursor pagination over ties."""

from __future__ import annotations

import asyncio
from typing import Any

import fakeredis
import orjson
import pytest

from engine.config import Settings
from engine.core.model import (
    Event,
    StepCompleted,
    StepError,
    StepFailed,
    StepScheduled,
    WorkflowCancelled,
    WorkflowCompleted,
    WorkflowCreated,
    WorkflowStarted,
)
from engine.errors import InvalidInput, NotFound
from engine.store.keys import Keys
from projections import PROJECTIONS, Projector, Queries
from projections.base import Applied
from projections.executions import fold_record
from projections.keys import ViewKeys, group_name
from projections.queries import decode_cursor, encode_cursor, parse_time
from projections.steps import fold_steps
from tests.unit.test_projections_property import append, dump, reference

CREATED = WorkflowCreated(instance_id="x", workflow="W", version="1", correlation_id="c")


def fold(fn: Any, events: list[Event]) -> Any:
    doc = None
    for v, e in enumerate(events, 1):
        doc = fn(doc, "x", Applied(v, 100 * v, e))
    return doc


def test_execution_record_follows_the_lifecycle() -> None:
    r = fold(fold_record, [CREATED, WorkflowStarted(), StepScheduled(step="a", attempt=1, task_id="t", queue="q")])
    assert (r["status"], r["current_steps"], r["attempts"], r["created_ms"], r["started_ms"]) == (
        "running", ["a"], {"a": 1}, 100, 200)
    r = fold(fold_record, [CREATED, WorkflowStarted(), StepScheduled(step="a", attempt=1, task_id="t", queue="q"),
                           StepFailed(step="a", attempt=1, error=StepError(message="m"), retry_at=9),
                           StepScheduled(step="a", attempt=2, task_id="t", queue="q"),
                           StepCompleted(step="a", attempt=2, output=1), WorkflowCompleted(output={"a": 1})])
    assert r["status"] == "completed" and r["current_steps"] == [] and r["attempts_total"] == 2
    assert r["last_error"] == {"step": "a", "attempt": 1, "message": "m"} and r["completed_ms"] == 700
    assert r["version"] == 7 and r["output"] == {"a": 1} and r["correlation_id"] == "c"


def test_step_history_one_record_per_attempt_in_order() -> None:
    h = fold(fold_steps, [CREATED, WorkflowStarted(), StepScheduled(step="a", attempt=1, task_id="t", queue="q",
                                                                     input={"i": 1}),
                          StepFailed(step="a", attempt=1, error=StepError(message="m"), retry_at=9),
                          StepScheduled(step="a", attempt=2, task_id="t", queue="q"),
                          StepCompleted(step="a", attempt=2, output="ok"),
                          StepScheduled(step="b", attempt=1, task_id="t", queue="q"), WorkflowCancelled()])
    assert [(s["step"], s["attempt"], s["status"]) for s in h] == [
        ("a", 1, "failed"), ("a", 2, "completed"), ("b", 1, "cancelled")]
    assert h[0]["input"] == {"i": 1} and h[0]["error"]["message"] == "m" and h[0]["duration_ms"] == 100
    assert h[1]["output"] == "ok" and h[2]["completed_ms"] == 800


HIST = {"i1": [CREATED, WorkflowStarted(), StepScheduled(step="a", attempt=1, task_id="t", queue="q"),
               StepCompleted(step="a", attempt=1, output=1), WorkflowCompleted(output=1)]}


def setup(consumers: tuple[str, ...] = ("A", "B")) -> tuple[Any, Keys, list[Projector]]:
    server = fakeredis.FakeServer()
    settings = [Settings(prefix="u", partitions=2, block_ms=0, claim_idle_ms=0, consumer=c) for c in consumers]
    return (fakeredis.FakeAsyncRedis(server=server), Keys("u", 2),
            [Projector(fakeredis.FakeAsyncRedis(server=server), s) for s in settings])


def test_a_guard_that_moved_underneath_folds_again() -> None:
    async def go() -> None:
        redis, keys, (a, b) = setup()
        await a.prepare()
        await append(redis, keys, HIST, ["i1"] * 5)
        ex = PROJECTIONS["executions"]
        first = await a.readers["executions"].read(2, None)
        rest = await b.readers["executions"].read(10, None)
        real_load = b.store.load_views

        async def racing_load(name: str, wanted: Any) -> Any:
            views = await real_load(name, wanted)
            if b.stats.refused == 0 and a.stats.applied == 0:
                await a.apply(ex, first)  # A writes between B's load and B's script call
            return views

        b.store.load_views = racing_load  # type: ignore[method-assign]
        await b.apply(ex, rest)
        assert b.stats.refused == 1 and b.stats.applied == 3
        views = await dump(redis, "u")
        want = reference(ViewKeys(keys), keys, HIST)
        key = ViewKeys(keys).view(keys.partition("i1"), "i1")
        assert views[key]["executions"] == want[key]["executions"]

    asyncio.run(go())


def test_a_gap_is_filled_from_the_instance_stream_and_repeats_skipped() -> None:
    async def go() -> None:
        redis, keys, (a, b) = setup()
        await a.prepare()
        await append(redis, keys, HIST, ["i1"] * 5)
        st = PROJECTIONS["steps"]
        held = await a.readers["steps"].read(2, None)  # A stalls on versions 1-2
        await b.apply(st, await b.readers["steps"].read(10, None))
        assert b.stats.filled == 2 and b.stats.applied == 3
        await a.apply(st, held)  # late: at or below the projected version
        assert a.stats.skipped == 2 and a.stats.applied == 0
        p = keys.partition("i1")
        assert (await redis.xpending(keys.feed(p), group_name("steps")))["pending"] == 0
        assert await redis.hget(ViewKeys(keys).view(p, "i1"), "v:steps") == b"5"
        assert await redis.hget(ViewKeys(keys).checkpoint(p), "steps") is not None

    asyncio.run(go())


def test_unreadable_feed_entry_is_dead_lettered() -> None:
    async def go() -> None:
        redis, keys, (a,) = setup(("A",))
        await a.prepare()
        await redis.xadd(keys.feed(0), {"type": "workflow.created", "version": "x", "data": "{", "id": "i"})
        await a.apply(PROJECTIONS["executions"], await a.readers["executions"].read(10, None))
        dead = await redis.xrange(keys.dlq(0))
        assert len(dead) == 1 and b"cannot read" in dead[0][1][b"reason"]
        assert (await redis.xpending(keys.feed(0), group_name("executions")))["pending"] == 0

    asyncio.run(go())


def test_queries_refuse_bad_input_and_say_not_found() -> None:
    async def go() -> None:
        redis, keys, _ = setup(())
        q = Queries(redis, Settings(prefix="u", partitions=2))
        with pytest.raises(InvalidInput, match="unknown status"):
            await q.executions(status="bogus")
        with pytest.raises(InvalidInput, match="limit"):
            await q.executions(limit=0)
        with pytest.raises(InvalidInput, match="cursor"):
            await q.executions(cursor="!!")
        with pytest.raises(InvalidInput, match="instance id"):
            await q.execution("{bad}")
        with pytest.raises(NotFound):
            await q.execution("nope")
        with pytest.raises(NotFound):
            await q.steps("nope")
        with pytest.raises(NotFound):
            await q.correlation("nope")
        assert (await q.executions())["items"] == []

    asyncio.run(go())


def test_time_and_cursor_parsing() -> None:
    assert parse_time("1700000000000") == 1700000000000
    assert parse_time("1h", now_ms=10_000_000) == 10_000_000 - 3_600_000
    assert parse_time("2024-01-01T00:00:00Z") == 1704067200000
    with pytest.raises(InvalidInput):
        parse_time("yesterday")
    assert decode_cursor(encode_cursor(5, "a:b")) == (5, "a:b")


def test_pagination_over_ties_across_partitions() -> None:
    async def go() -> None:
        redis, keys, _ = setup(())
        vk = ViewKeys(keys)
        ids = [f"t{i}" for i in range(23)]
        for i, iid in enumerate(ids):
            p = keys.partition(iid)
            score = 1000 + i // 10  # runs of ten equal creation times
            await redis.zadd(vk.index(p), {iid: score})
            await redis.hset(vk.view(p, iid), "executions", orjson.dumps({"id": iid}))
        q = Queries(redis, Settings(prefix="u", partitions=2))
        seen: list[str] = []
        cursor = None
        while True:
            page = await q.executions(limit=3, cursor=cursor)
            assert page["count"] == 23
            seen += [r["id"] for r in page["items"]]
            cursor = page["next_cursor"]
            if not cursor:
                break
        assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen))

    asyncio.run(go())
