"""Priority lanes end to end (issue 16): real engine and activity worker processes on a real Redis.

One activity worker with 2 slots and a 10 ms handler has 300 priority-0 instances to run when 10
priority-9 ones start: the priority-9 ones finish before half of the 300 have (the order is
asserted, never a time). And a lane task whose activity worker is SIGKILLed is reclaimed by a
second worker and completes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from engine.client import Client
from engine.config import Settings
from engine.store.keys import ACTIVITY_GROUP, Keys
from engine.store.replies import text
from tests.support.admission_support import HANDLERS, final_of, start_many
from tests.support.fault_support import Procs, completed_count, histories
from tests.support.poll import eventually, run
from tests.support.tools import CRASH_KNOBS, foldflow_env

pytestmark = pytest.mark.redis
LOW, HIGH = 300, 10
NAME = "lanes-one-step"
ONE_STEP: dict[str, Any] = {"name": NAME, "version": "1", "definition": {"steps": [
    {"name": "work", "type": "service_call", "service": "admission-sleep", "input": {"ms": "{{ input.ms }}"}}]}}


@pytest.fixture
def procs(settings: Settings, tmp_path: Path) -> Iterator[Procs]:
    procs = Procs(foldflow_env(settings, CRASH_KNOBS, FOLDFLOW_CONCURRENCY="2", FOLDFLOW_TASK_CLAIM_IDLE_MS="1500"),
                  tmp_path)
    try:
        yield procs
    finally:
        procs.kill_all()


def _completed_ms(hist: dict[str, list[dict[str, Any]]]) -> dict[str, int]:
    out = {}
    for iid, h in hist.items():
        final = final_of(h)
        assert final is not None and final["type"] == "workflow.completed", (iid, h[-1:])
        out[iid] = int(final["ts"])
    return out


def test_priority_nine_overtakes_a_queue_of_priority_zero(settings: Settings, procs: Procs) -> None:
    async def scenario() -> None:
        redis = aioredis.Redis.from_url(settings.redis_url)
        client = Client(redis, settings)
        keys = Keys(settings.prefix, settings.partitions)
        try:
            await client.register(ONE_STEP)
            procs.start("w", "worker")
            procs.start("a", "activities", "--module", HANDLERS)
            low = [f"low-{i:03d}" for i in range(LOW)]
            high = [f"high-{i}" for i in range(HIGH)]
            await start_many(redis, keys, NAME, [(i, {"context": {"ms": 10}}) for i in low])

            async def busy() -> bool:
                return await completed_count(redis, keys, low) >= 10
            await eventually(busy, 60, "the worker is running the priority-0 flood", interval=0.05)
            at_start = await completed_count(redis, keys, low)
            await start_many(redis, keys, NAME, [(i, {"context": {"ms": 10}, "priority": 9}) for i in high])

            async def done() -> bool:
                return await completed_count(redis, keys, low + high) == LOW + HIGH
            await eventually(done, 90, "every instance completed", interval=0.1)
            ended = _completed_ms(await histories(redis, keys, low + high))
            last_high = max(ended[i] for i in high)
            low_before = sum(ended[i] <= last_high for i in low)
            print(f"priority-0 completed when the priority-9 starts went in: {at_start}/{LOW}; "
                  f"when the last of {HIGH} priority-9 completed: {low_before}/{LOW}")
            assert low_before < LOW // 2, (at_start, low_before)
            lanes = {text(m) for p in range(keys.partitions) for m in await redis.smembers(keys.lanes(p))}
            assert lanes == {keys.tasks(keys.partition(i), "admission-sleep", 9) for i in high}
        finally:
            await redis.aclose()
    run(scenario())


def test_a_lane_task_of_a_killed_worker_is_reclaimed_and_completes(settings: Settings, procs: Procs) -> None:
    async def scenario() -> None:
        redis = aioredis.Redis.from_url(settings.redis_url)
        client = Client(redis, settings)
        keys = Keys(settings.prefix, settings.partitions)
        try:
            await client.register(ONE_STEP)
            procs.start("w", "worker")
            procs.start("a1", "activities", "--module", HANDLERS)
            iid = await client.start(NAME, {"ms": 1500}, priority=7, instance_id="urgent-1")
            lane = keys.tasks(keys.partition(iid), "admission-sleep", 7)

            async def held() -> list[Any]:
                try:
                    return list(await redis.xpending_range(lane, ACTIVITY_GROUP, min="-", max="+", count=10))
                except aioredis.ResponseError:  # NOGROUP: the engine has not written the task yet
                    return []
            await eventually(held, 20, "a1 took the lane task", interval=0.05)
            [row] = await held()
            assert row["consumer"].decode() == procs.consumer("a1")
            procs.kill("a1")
            procs.start("a2", "activities", "--module", HANDLERS)

            async def completed() -> bool:
                return (await client.state(iid)).status == "completed"
            await eventually(completed, 30, "the lane task was reclaimed by a2 and completed", interval=0.1)
            hist = (await histories(redis, keys, [iid]))[iid]
            print("events:", [e["type"] for e in hist])
            assert sum(e["type"] == "workflow.step_completed" for e in hist) == 1
            assert await redis.xlen(lane) == 0  # answered: the task entry is gone
            assert not await held()
        finally:
            await redis.aclose()
    run(scenario())
