"""Fault 1, repeated worker crashes: during a run of the agent example, an
engine worker, an activity worker and a projector are SIGKILLed in turn (each
restarted at once). Every instance completes; every history passes
check_history (each step attempt scheduled and completed at most once, versions
1..n); nothing is left pending or dead-lettered; and the read models equal a
reference fold of each instance stream (tests/faults/test_projections_crash.check_exact).

Short variant always runs (600 instances, 5 kills); the long one
(5,000 instances, 20 kills, one a second) needs FOLDFLOW_SLOW=1 or -m slow.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from engine.client import Client
from engine.config import Settings
from engine.store.keys import ENGINE_GROUP, Keys
from projections import PROJECTIONS, Queries
from projections.keys import group_name
from tests.faults.test_projections_crash import check_exact
from tests.support.fault_support import Procs, check_all, histories, pending_total, start_many
from tests.support.helpers import AgentSimulator
from tests.support.poll import eventually, run
from tests.support.tools import FAULT_KNOBS, foldflow_env

pytestmark = pytest.mark.redis


def crash_run(settings: Settings, agent_example: bytes, tmp_path: Path, instances: int, kills: int,
              every: float, timeout: float) -> dict[str, object]:
    procs = Procs(foldflow_env(settings, FAULT_KNOBS, FOLDFLOW_BATCH_SIZE="128"), tmp_path)
    report: dict[str, object] = {}

    async def scenario() -> None:
        redis = aioredis.Redis.from_url(settings.redis_url)
        client = Client(redis, settings)
        keys = Keys(settings.prefix, settings.partitions)
        queries = Queries(redis, settings)
        agents = AgentSimulator(aioredis.Redis.from_url(settings.redis_url), client, keys)
        definition, _ = await client.register(agent_example)
        for name, role in (("w1", "worker"), ("w2", "worker"), ("a1", "activities"), ("a2", "activities"),
                           ("p1", "projector"), ("p2", "projector")):
            procs.start(name, role)
        sim = asyncio.create_task(agents.run())
        ids = [f"fc-{i}" for i in range(instances)]
        began = time.monotonic()
        def context(i: int) -> dict[str, object]:
            return {"project_id": "p", "task_id": f"t-{i}", "agent_id": f"a-{i % 7}", "flaky": i % 10 == 0}

        killing = asyncio.Event()
        first = instances // 10

        async def feed_starts() -> None:
            # A first tenth gets the workers going; the rest is spread over the kill period
            # (not over wall-clock time from the start: workers that are slow to start on a
            # loaded machine would otherwise have everything queued before the first kill),
            # so every kill hits work in flight.
            await start_many(redis, keys, ids[:first], definition.name, context)
            await killing.wait()
            waves = max(1, int(kills * every * 5))
            size = -(-(instances - first) // waves)
            for lo in range(first, instances, size):
                await start_many(redis, keys, ids[lo: lo + size], definition.name, lambda i: context(lo + i))
                await asyncio.sleep(kills * every / waves)

        feeder = asyncio.create_task(feed_starts())
        deadline = began + timeout
        await eventually(lambda: len(agents.completed) >= first // 2, deadline - time.monotonic(),
                         "half the first tenth completed before the first kill", interval=0.02)
        victims = itertools.cycle([("w1", "worker"), ("a1", "activities"), ("p1", "projector"),
                                   ("w2", "worker"), ("a2", "activities"), ("p2", "projector")])
        at_kill = []
        killing.set()
        for _, (name, role) in zip(range(kills), victims):
            at_kill.append(len(agents.completed))
            procs.kill(name)
            procs.start(name, role)
            await asyncio.sleep(every)
        last_kill = time.monotonic()
        await feeder
        await eventually(lambda: len(agents.completed) >= instances, deadline - time.monotonic(),
                         "every instance completed after the kills")
        completed_at = time.monotonic()
        agents.stop()
        await sim
        assert at_kill[-1] < instances, f"the last kill came too late to test anything: {at_kill}"

        hist = await histories(redis, keys, ids)
        assert all(h and h[-1]["type"] == "workflow.completed" for h in hist.values())
        totals = check_all(hist)
        feed_total = sum([await redis.xlen(keys.feed(p)) for p in range(keys.partitions)])
        assert feed_total == totals["events"], "the feeds hold each event exactly once"
        assert await pending_total(redis, keys.all_inboxes(), ENGINE_GROUP) == 0
        dlq = sum([await redis.xlen(keys.dlq(p)) for p in range(keys.partitions)])
        assert dlq == 0, "nothing is dead-lettered by crashes"

        async def drained() -> bool:
            if await queries.count(status="completed") < instances:
                return False
            feeds = [keys.feed(p) for p in range(keys.partitions)]
            return all([await pending_total(redis, feeds, group_name(n)) == 0 for n in PROJECTIONS])

        await eventually(drained, deadline - time.monotonic(), "the projections caught up", interval=0.1)
        projected_at = time.monotonic()
        events = await check_exact(redis, settings, ids)
        assert events == totals["events"]
        report.update(instances=instances, kills=kills, completed_at_each_kill=at_kill, events=events,
                      step_failures=totals["step_failed"], run_s=round(completed_at - began, 1),
                      after_last_kill_s=round(completed_at - last_kill, 1),
                      projected_after_s=round(projected_at - completed_at, 1), published=agents.published)
        print("crash run:", report)
        await client.close()
        await agents.redis.aclose()

    try:
        run(scenario())
        procs.stop_all()
    finally:
        procs.kill_all()
    return report


def test_repeated_worker_crashes_short(settings: Settings, agent_example: bytes, tmp_path: Path) -> None:
    crash_run(settings, agent_example, tmp_path, instances=600, kills=5, every=1.0, timeout=90)


@pytest.mark.slow
def test_repeated_worker_crashes_long(settings: Settings, agent_example: bytes, tmp_path: Path) -> None:
    crash_run(settings, agent_example, tmp_path, instances=5000, kills=20, every=1.0, timeout=600)
