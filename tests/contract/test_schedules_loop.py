"""The scheduler loop with the engine behind it: the overlap policies against runs that are
really still going (an activity handler held open), and a worker that claimed a schedule,
sent its start and died before advancing it (fakeredis: the next claimer re-sends the same
start, and the instance id makes it one)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import fakeredis
import pytest
import redis.asyncio as aioredis

from engine.client import Client
from engine.config import Settings
from engine.core.model import Task
from engine.core.schedules import Schedule, execution_id
from engine.store.catalog import Catalog
from engine.store.events import Store
from engine.store.keys import Keys
from engine.store.schedule_ops import ScheduleOps
from engine.store.schedules import ScheduleStore
from engine.workers.activities import ActivityWorker, Registry
from engine.workers.engine import EngineWorker
from engine.workers.scheduler import Scheduler
from tests.support.poll import eventually, run

HOLD = {"name": "sched-hold", "version": "1", "definition": {"steps": [
    {"name": "s1", "step_type": "service_call", "service": "sched-hold", "endpoint": "/x", "sequence": 1}]}}


@asynccontextmanager
async def engine(settings: Settings) -> AsyncIterator[tuple[ScheduleOps, Client, asyncio.Event]]:
    """An engine worker (scheduler polling every 50 ms) and an activity worker whose handler
    holds every run open until the gate is set."""
    settings = Settings(redis_url=settings.redis_url, prefix=settings.prefix, partitions=2, block_ms=50,
                        schedule_poll_ms=50, lease_ms=1000)
    gate = asyncio.Event()
    reg = Registry()

    @reg.handler("sched-hold")
    async def hold(task: Task) -> dict[str, Any]:
        await gate.wait()
        return {"done": True}

    redis = aioredis.Redis.from_url(settings.redis_url)
    client = Client(redis, settings)
    await client.register(HOLD)
    keys = Keys(settings.prefix, settings.partitions)
    workers = [EngineWorker(aioredis.Redis.from_url(settings.redis_url), settings),
               ActivityWorker(aioredis.Redis.from_url(settings.redis_url), settings, registry=reg)]
    tasks = [asyncio.create_task(w.run()) for w in workers]
    try:
        yield ScheduleOps(ScheduleStore(redis, keys), Catalog(Store(redis, keys))), client, gate
    finally:
        gate.set()
        for w in workers:
            w.stop()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
        await redis.aclose()


async def _actions(ops: ScheduleOps, name: str) -> Counter[str]:
    return Counter(r.action for r in await ops.store.runs(name, 100))


def _at_least(action: str, n: int) -> Callable[[Counter[str]], bool]:
    return lambda seen: seen[action] >= n


@pytest.mark.redis
def test_skip_and_buffer_one_against_a_run_that_is_still_going(settings: Settings) -> None:
    async def main() -> None:
        async with engine(settings) as (ops, client, gate):
            for policy in ("skip", "buffer_one"):
                await ops.create(Schedule(name=policy, workflow="sched-hold", every="1s", overlap=policy))
            await eventually(lambda: _actions(ops, "skip"), 10, "skips while the first run holds", ok=_at_least("skipped", 2))
            await eventually(lambda: _actions(ops, "buffer_one"), 10, "a buffered fire", ok=_at_least("skipped", 1))
            for policy in ("skip", "buffer_one"):
                seen = await _actions(ops, policy)
                assert seen["started"] == 1, (policy, seen)  # nothing else starts while the first runs
            held = (await ops.store.found("buffer_one")).buffered_ms
            assert held is not None
            gate.set()  # the held runs finish: buffer_one starts its held fire, skip the next fire time
            await eventually(lambda: _actions(ops, "buffer_one"), 10, "the buffered start", ok=_at_least("started", 2))
            started = [r for r in await ops.store.runs("buffer_one", 100) if r.action == "started"]
            assert started[-2].fire_ms == held and started[-2].execution_id == execution_id("buffer_one", held)
            await eventually(lambda: _actions(ops, "skip"), 10, "a start after the first finished",
                             ok=_at_least("started", 2))
    run(main())


@pytest.mark.redis
def test_cancel_previous_cancels_the_running_one(settings: Settings) -> None:
    async def main() -> None:
        async with engine(settings) as (ops, client, _):
            await ops.create(Schedule(name="cp", workflow="sched-hold", every="1s", overlap="cancel_previous"))
            await eventually(lambda: _actions(ops, "cp"), 10, "a cancel_previous", ok=_at_least("cancelled_previous", 1))
            runs = [r for r in await ops.store.runs("cp", 100) if r.action == "started"]
            oldest = runs[-1].execution_id
            assert oldest is not None
            cancelled = await client.wait(oldest, timeout=10, statuses=frozenset({"cancelled"}))
            assert cancelled.status == "cancelled"
    run(main())


def test_a_worker_killed_after_claiming_and_sending_leaves_one_start() -> None:
    async def main() -> None:
        redis = fakeredis.aioredis.FakeRedis(server=fakeredis.FakeServer())
        settings = Settings(prefix="t", partitions=2, schedule_poll_ms=50)
        keys = Keys("t", 2)
        client = Client(redis, settings)
        await client.register(HOLD)
        store, catalog = ScheduleStore(redis, keys), Catalog(Store(redis, keys))
        s = Schedule(name="ghost", workflow="sched-hold", every="1s", overlap="allow")
        await ScheduleOps(store, catalog).create(s)
        await asyncio.sleep(1.1)  # a fire time is due
        now, [(name, _)] = await store.claim(10, 150, "ghost-worker")  # the worker that dies
        cursor = (await store.found(name)).cursor_ms
        fire = (cursor // 1000 + 1) * 1000
        iid = execution_id("ghost", fire)
        await store.send("start", iid, await catalog.start_data(s.workflow, s.context, s.version, s.correlation_id), cmd_id=f"start:{iid}")  # ... and is killed
        scheduler = Scheduler(store, catalog, settings, "live-worker")
        assert await scheduler.tick() == 0  # held by the ghost's lease
        await asyncio.sleep(0.2)
        assert await scheduler.tick() == 1  # the lease ran out: claimed again
        sent: Counter[str] = Counter()
        for inbox in keys.all_inboxes():
            for _, f in await redis.xrange(inbox):
                sent[f[b"cmd_id"].decode()] += 1
        assert sent[f"start:{iid}"] == 2  # re-sent with the same cmd_id and id: the engine applies one
        assert (await store.found(name)).last_fire_ms is not None
        assert all(n == 1 for k, n in sent.items() if k != f"start:{iid}")
    run(main())
