"""Projector throughput and lag, measured (python -m bench.projections).

1. Catch-up: a backlog of synthetic histories is appended to the instance
   streams and feeds as append.lua writes them; one projector process (all four
   projections) projects it; events/s = feed entries x projections / seconds.
2. Under load: the agent-task-execution demo (2 engine workers, an activity
   worker, the agent simulator, in this process) with a projector running;
   lag = time from an event's append (its ts) to its projection, per event.

Uses REDIS_URL when set, else a redis-server it starts on a free port.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.config import Settings  # noqa: E402
from engine.core.model import StepCompleted, StepScheduled, WorkflowCompleted, WorkflowCreated, WorkflowStarted, encode  # noqa: E402
from engine.dev.embedded import RedisServer  # noqa: E402
from engine.store.events import event_type  # noqa: E402
from engine.store.keys import Keys  # noqa: E402
from projections import PROJECTIONS, Projector  # noqa: E402


def pct(values: list[int], q: float) -> float:
    values = sorted(values)
    return float(values[min(len(values) - 1, int(q / 100 * len(values)))]) if values else 0.0


async def drained(redis: aioredis.Redis, keys: Keys) -> bool:
    for p in range(keys.partitions):
        for g in await redis.xinfo_groups(keys.feed(p)):
            if int(g["pending"]) or (g.get("lag") or 0):
                return False
    return True


async def catch_up(url: str, instances: int) -> dict[str, Any]:
    settings = Settings(redis_url=url, prefix="bp1", partitions=8, block_ms=50, batch_size=512)
    keys = Keys(settings.prefix, settings.partitions)
    redis = aioredis.Redis.from_url(url)
    projector = Projector(aioredis.Redis.from_url(url), settings)
    await projector.prepare()
    pipe = redis.pipeline(transaction=False)
    total = 0
    now = time.time_ns() // 1_000_000
    for i in range(instances):
        iid = f"b{i}"
        p = keys.partition(iid)
        events = [WorkflowCreated(instance_id=iid, workflow="W", version="1", correlation_id=f"c{i % 100}"),
                  WorkflowStarted()]
        for step in ("a", "b", "c"):
            events += [StepScheduled(step=step, attempt=1, task_id=f"{iid}:{step}:1", queue="q", input={"i": i}),
                       StepCompleted(step=step, attempt=1, output={"ok": True})]
        events.append(WorkflowCompleted(output={"done": i}))
        for v, e in enumerate(events, 1):
            fields = {"type": event_type(e), "version": v, "ts": now, "data": encode(e)}
            pipe.xadd(keys.instance(iid, p), fields)
            pipe.xadd(keys.feed(p), {**fields, "id": iid})
            total += 1
        if i % 500 == 499:
            await pipe.execute()
    await pipe.execute()
    t0 = time.perf_counter()
    task = asyncio.create_task(projector.run())
    while not await drained(redis, keys):
        await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - t0
    projector.stop()
    await task
    await redis.aclose()
    return {"instances": instances, "feed_entries": total, "projections": len(PROJECTIONS),
            "seconds": round(elapsed, 2), "feed_entries_per_s": round(total / elapsed),
            "events_projected_per_s": round(total * len(PROJECTIONS) / elapsed)}


async def under_load(url: str, instances: int) -> dict[str, Any]:
    from tests.support.helpers import Cluster  # the engine + activity worker + agent simulator of the tests

    settings = Settings(redis_url=url, prefix="bp2", partitions=8, block_ms=50, timer_poll_ms=20)
    projector = Projector(aioredis.Redis.from_url(url), settings)
    await projector.prepare()
    body = (ROOT / "engine" / "dev" / "examples" / "agent-task-execution.json").read_bytes()
    async with Cluster(lambda: aioredis.Redis.from_url(url), settings) as cluster:
        task = asyncio.create_task(projector.run())
        definition, _ = await cluster.client.register(body)
        t0 = time.perf_counter()
        for i in range(instances):
            await cluster.client.start(definition.name, {"project_id": "p", "task_id": f"t{i}", "agent_id": f"a{i}"},
                                       instance_id=f"l{i}", correlation_id=f"c{i % 50}")
        keys = Keys(settings.prefix, settings.partitions)
        while len(cluster.agents.completed) < instances or not await drained(projector.redis, keys):
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - t0
        projector.stop()
        await task
    lags = list(projector.stats.lags_ms)
    return {"instances": instances, "events_projected": len(lags), "seconds": round(elapsed, 2),
            "events_projected_per_s": round(len(lags) / elapsed), "lag_p50_ms": pct(lags, 50), "lag_p99_ms": pct(lags, 99),
            "lag_max_ms": max(lags) if lags else 0, "lag_mean_ms": round(statistics.fmean(lags), 1) if lags else 0}


async def main(args: argparse.Namespace) -> None:
    url = os.environ.get("REDIS_URL")
    server = None if url else RedisServer().start()
    url = url or (server.url if server else "")
    try:
        print("catch-up:", await catch_up(url, args.backlog), flush=True)
        print("under demo load:", await under_load(url, args.instances), flush=True)
    finally:
        if server:
            server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=5000, help="instances in the catch-up backlog (9 events each)")
    parser.add_argument("--instances", type=int, default=500, help="demo instances run under load")
    import uvloop

    uvloop.run(main(parser.parse_args()))
