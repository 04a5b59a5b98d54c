"""Fault 7 of issue 5, backpressure: a flood of start commands is queued in the
inboxes before any worker runs (XADD in pipelined batches); then one engine
worker process and one activity worker process drain it. The engine worker's
resident memory (VmRSS from /proc) stays bounded by its batch size and state
cache, not by the backlog, and every instance completes.

Short variant: 20,000 starts; long (slow): 100,000.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from engine.client import Client
from engine.config import Settings
from engine.store.keys import ENGINE_GROUP, Keys
from tests.support.fault_support import Procs, completed_count, pending_total, rss_kb, start_many
from tests.support.poll import eventually, run
from tests.support.tools import FAULT_KNOBS, foldflow_env

pytestmark = [pytest.mark.redis, pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")]

ONE_STEP = {
    "name": "fault-flood", "version": "1",
    "definition": {"steps": [
        {"name": "only", "step_type": "service_call", "service": "agent-orchestrator", "endpoint": "/x",
         "sequence": 1},
    ]},
}
RSS_LIMIT_MB = 300


def flood(settings: Settings, tmp_path: Path, instances: int, timeout: float) -> dict[str, Any]:
    procs = Procs(foldflow_env(settings, FAULT_KNOBS), tmp_path)
    report: dict[str, Any] = {"instances": instances}

    async def scenario() -> None:
        r = aioredis.Redis.from_url(settings.redis_url)
        client = Client(r, settings)
        keys = Keys(settings.prefix, settings.partitions)
        await client.register(ONE_STEP)
        ids = [f"bp-{i}" for i in range(instances)]
        t0 = time.monotonic()
        await start_many(r, keys, ids, ONE_STEP["name"], batch=5000)
        report["queue_s"] = round(time.monotonic() - t0, 1)
        worker = procs.start("w1", "worker")
        procs.start("a1", "activities")
        began = time.monotonic()
        samples: list[int] = []
        tail = ids[-500:]
        progress: dict[str, int] = {}

        async def drained() -> dict[str, int] | None:  # sampling the worker's memory on the way
            samples.append(rss_kb(worker.pid))
            assert worker.poll() is None, procs.log("w1")[-3000:]
            progress["tail_completed"] = await completed_count(r, keys, tail)
            if progress["tail_completed"] < len(tail):
                return None
            progress["inbox_pending"] = await pending_total(r, keys.all_inboxes(), ENGINE_GROUP)
            progress["completed"] = await completed_count(r, keys, ids)
            return None if progress["inbox_pending"] or progress["completed"] < instances else progress

        try:
            await eventually(drained, timeout, "every instance completes and the inboxes drain", interval=0.5)
        except AssertionError as exc:  # say how far it got and what the workers said
            raise AssertionError(f"{exc}: {progress} after {time.monotonic() - began:.0f}s\n"
                                 f"w1: {procs.log('w1')[-2000:]}\na1: {procs.log('a1')[-2000:]}") from None
        report.update(drain_s=round(time.monotonic() - began, 1), rss_max_mb=round(max(samples) / 1024, 1),
                      rss_first_mb=round(next((s for s in samples if s), 0) / 1024, 1), samples=len(samples),
                      instances_per_s=round(instances / (time.monotonic() - began)))
        print("backpressure:", report)
        assert max(samples) < RSS_LIMIT_MB * 1024, report
        await client.close()

    try:
        run(scenario())
        procs.stop_all()
    finally:
        procs.kill_all()
    return report


def test_flood_of_starts_short(settings: Settings, tmp_path: Path) -> None:
    flood(settings, tmp_path, 20_000, timeout=180)  # 11 s alone; CI shares its 2 cores


@pytest.mark.slow
def test_flood_of_starts_long(settings: Settings, tmp_path: Path) -> None:
    flood(settings, tmp_path, 100_000, timeout=600)
