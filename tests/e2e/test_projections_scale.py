"""Queries over 100,000 projected executions answer from the indexes: the
number of Redis commands each one issues is asserted (read from the server's
own command statistics), never its time. The executions are written through
the projection's own write path (project.lua, in batches), from synthetic
histories, so the test stays fast."""

from __future__ import annotations

import random
from typing import Any

import pytest
import redis.asyncio as aioredis

from engine.config import Settings
from engine.core.model import (
    Event,
    StepError,
    StepScheduled,
    WorkflowCompleted,
    WorkflowCreated,
    WorkflowFailed,
    WorkflowStarted,
)
from engine.store.keys import Keys
from projections import PROJECTIONS, Queries
from projections.base import Applied, Call, Ops, dumps
from projections.keys import ViewKeys
from projections.store import ViewStore
from tests.support.poll import run

pytestmark = pytest.mark.redis
N = 100_000
NOW = 1_700_000_000_000
HOUR = 3_600_000


def history(i: int, rnd: random.Random) -> tuple[int, list[Event]]:
    created = NOW - rnd.randrange(0, 10 * 24 * HOUR) // 7 * 7  # multiples of 7 ms: plenty of equal times
    events: list[Event] = [
        WorkflowCreated(instance_id=f"x{i}", workflow=f"W{i % 5}", version="1", correlation_id=f"c{i % 20_000}"),
        WorkflowStarted(),
        StepScheduled(step="a", attempt=1, task_id=f"x{i}:a:1", queue="q"),
    ]
    end = rnd.random()
    if end < 0.6:
        events.append(WorkflowCompleted(output={"i": i}))
    elif end < 0.8:
        events.append(WorkflowFailed(step="a", error=StepError(message="boom")))
    return created, events


async def populate(redis: aioredis.Redis, settings: Settings) -> list[dict[str, Any]]:
    keys = Keys(settings.prefix, settings.partitions)
    vk = ViewKeys(keys)
    store = ViewStore(redis, vk)
    await store.load_script()
    rnd = random.Random(7)
    records: list[dict[str, Any]] = []
    calls: dict[tuple[str, int], Call] = {}  # one projection per call: its name is the guard field
    pending: list[tuple[Call, str, str]] = []
    names = ("executions", "correlation")
    for i in range(N):
        iid = f"x{i}"
        p = keys.partition(iid)
        created, events = history(i, rnd)
        applied = [Applied(v, created + v - 1, e) for v, e in enumerate(events, 1)]
        for name in names:
            call = calls.get((name, p)) or calls.setdefault((name, p), Call(vk.checkpoint(p), keys.feed(p)))
            projection = PROJECTIONS[name]
            doc = projection.fold_all(None, iid, applied)
            ops = Ops()
            ops.hset(vk.view(p, iid), name, dumps(doc))
            projection.writes(ops, vk, p, iid, None, doc, applied, False)
            call.guarded((name, iid), vk.view(p, iid), 0, len(applied), ops, [])
            if name == "executions":
                records.append(doc)
            if len(call.blocks) >= 1000:
                pending.append((call, "", name))
                del calls[(name, p)]
        if len(pending) >= 8:
            await store.project(pending)
            pending = []
    await store.project(pending + [(c, "", name) for (name, _), c in calls.items()])
    return records


async def stats(redis: aioredis.Redis) -> dict[str, int]:
    info: Any = await redis.info("commandstats")
    return {k[len("cmdstat_"):]: int(v["calls"]) for k, v in info.items()
            if not k.startswith(("cmdstat_info", "cmdstat_config"))}


async def commands(redis: aioredis.Redis, query: Any) -> tuple[Any, dict[str, int]]:
    await redis.config_resetstat()
    result = await query
    return result, await stats(redis)


def test_queries_on_100k_executions_use_the_indexes(settings: Settings) -> None:
    async def scenario() -> None:
        admin = aioredis.Redis.from_url(settings.redis_url)
        redis = aioredis.Redis.from_url(settings.redis_url)
        records = await populate(admin, settings)
        P = settings.partitions
        q = Queries(redis, settings)
        await redis.ping()  # the connection exists before counting

        since = NOW - HOUR
        want = sorted(((r["created_ms"], r["id"]) for r in records
                       if r["status"] == "failed" and r["workflow"] == "W2" and r["created_ms"] >= since),
                      reverse=True)
        page, used = await commands(admin, q.executions(status="failed", workflow="W2", since=since, limit=20))
        assert page["count"] == len(want) and [r["id"] for r in page["items"]] == [i for _, i in want[:20]]
        assert sum(used.values()) <= 2 * P + 20, used
        assert set(used) <= {"zcount", "zrevrangebyscore", "hget"}, used

        # walk every failed execution of the last 10 days of W2 by cursor: the pages join up exactly
        want = sorted(((r["created_ms"], r["id"]) for r in records
                       if r["status"] == "failed" and r["workflow"] == "W2"), reverse=True)
        seen: list[str] = []
        cursor = None
        for _ in range(3):
            page, used = await commands(admin, q.executions(status="failed", workflow="W2", limit=500, cursor=cursor))
            seen += [r["id"] for r in page["items"]]
            cursor = page["next_cursor"]
            assert sum(used.values()) <= 2 * P + 500 + 2 * P, used  # + a refetch per partition over ties
        assert seen == [i for _, i in want[:1500]]

        n, used = await commands(admin, q.count(status="running"))
        assert n == sum(1 for r in records if r["status"] == "running") and sum(used.values()) == P, used

        all_page, used = await commands(admin, q.executions(limit=10))
        assert all_page["count"] == N and sum(used.values()) == 2 * P + 10, used

        record, used = await commands(admin, q.execution("x4242"))
        assert record["id"] == "x4242" and used == {"hget": 1}

        found, used = await commands(admin, q.correlation("c42"))
        assert sorted(e["id"] for e in found["executions"]) == sorted(f"x{i}" for i in range(42, N, 20_000))
        assert sum(used.values()) == P + 1 + 2 * len(found["executions"]), used
        await q.close()
        await admin.aclose()

    run(scenario())
