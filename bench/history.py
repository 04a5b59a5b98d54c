"""Case 5, long histories: the engine's per-command cost on an instance whose
history is 10, 1,000, 10,000 or 100,000 events long.

Histories are grown fast by retries (a loop step would cost a task round trip
per item, and a definition is capped at 1 MiB, so a 50,000-step linear one does
not fit). The workflow has one step with
`max_attempts` 10^9 and no backoff; the bench feeds the real engine worker
(`EngineWorker.process`, in this process, on the bench's redis-server) the
commands an activity worker and the timer script would send, in order:
`step.failed` (attempt n, cmd_id `res:<task id>`) then `timer` (retry, attempt
n, cmd_id `timer:retry:s0:<n>`). Each pair appends two events (step_failed,
step_scheduled), so history length = 3 + 2 x pairs. Growth goes in batches of
up to 256 commands per XREADGROUP, as a busy worker would read them.

Measured at each length, one command per batch (read, decide, append): the
warm per-command time (state in the worker's cache), and the cold time of the
first command after the cache entry is dropped (the whole stream is read and
folded: what a worker restart or a partition move costs, absent snapshots).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import orjson
import redis.asyncio as aioredis

from engine.client import Client
from engine.store.keys import Keys
from engine.workers.engine import EngineWorker

from .harness import bench_settings

DEFINITION = {"name": "bench-retry", "version": "1", "definition": {"steps": [
    {"name": "s0", "step_type": "service_call", "service": "bench", "endpoint": "/s0",
     "retry_policy": {"max_attempts": 1_000_000_000, "backoff": "fixed", "initial_delay": "0ms"}}]}}


class _Feeder:
    def __init__(self, redis: aioredis.Redis, keys: Keys, worker: EngineWorker, iid: str) -> None:
        self.redis, self.keys, self.worker, self.iid = redis, keys, worker, iid
        self.inbox = keys.inbox(keys.partition(iid))
        self.attempt = 1  # the attempt now scheduled

    def pair(self) -> list[dict[str, Any]]:
        n, iid = self.attempt, self.iid
        self.attempt += 1
        failed = {"step": "s0", "attempt": n, "task_id": f"{iid}:s0:{n}",
                  "error": {"message": "again", "retryable": True, "kind": "handler"}}
        return [{"type": "step.failed", "id": iid, "data": orjson.dumps(failed), "cmd_id": f"res:{iid}:s0:{n}"},
                {"type": "timer", "id": iid, "data": orjson.dumps({"kind": "retry", "step": "s0", "attempt": n}),
                 "cmd_id": f"timer:retry:s0:{n}"}]

    async def send(self, commands: list[dict[str, Any]]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for c in commands:
            pipe.xadd(self.inbox, c)
        await pipe.execute()

    async def drain(self) -> int:
        n = 0
        while True:
            entries = await self.worker.reader.read(self.worker.settings.batch_size, None)
            if not entries:
                return n
            await self.worker.process(entries)
            n += len(entries)

    async def length(self) -> int:
        return int(await self.redis.xlen(self.keys.instance(self.iid)))


async def one_length(url: str, target: int, samples: int, cold_samples: int = 3,
                     grow_budget_s: float = 120.0) -> dict[str, Any]:
    """Grow one instance towards `target` events (stopping after grow_budget_s), then measure."""
    # A lease far longer than the run: process() is driven here without the worker's renewal loop.
    settings = bench_settings(url, partitions=1, batch_size=256, lease_ms=3_600_000)
    keys = Keys(settings.prefix, settings.partitions)
    redis = aioredis.Redis.from_url(url)
    client = Client(redis, settings)
    await client.register(DEFINITION)
    worker = EngineWorker(redis, settings)
    try:
        await worker.prepare()
        await worker.rebalance()
        iid = f"h{target}"
        feed = _Feeder(redis, keys, worker, iid)
        await feed.send([{"type": "start", "id": iid, "data": orjson.dumps({"workflow": "bench-retry"}),
                          "cmd_id": f"start:{iid}"}])
        await feed.drain()
        t0 = time.perf_counter()
        pairs = max(0, (target - 3) // 2)
        while pairs and time.perf_counter() - t0 < grow_budget_s:
            k = min(pairs, 128)
            await feed.send([c for _ in range(k) for c in feed.pair()])
            await feed.drain()
            pairs -= k
        grow_s = time.perf_counter() - t0
        length = await feed.length()
        warm: list[float] = []
        for _ in range(samples):
            for command in feed.pair():
                await feed.send([command])
                t = time.perf_counter()
                await feed.drain()
                warm.append((time.perf_counter() - t) * 1000)
        cold: list[float] = []
        for _ in range(cold_samples):
            worker.cache.drop(iid)
            failed, timer = feed.pair()
            await feed.send([failed])
            t = time.perf_counter()
            await feed.drain()
            cold.append((time.perf_counter() - t) * 1000)
            await feed.send([timer])
            await feed.drain()
        stats = worker.stats
        if stats.fenced or stats.dead_lettered:
            raise RuntimeError(f"history case went wrong: {length} events, stats {stats.as_dict()}")
        return {"target_events": target, "events_at_measure": length, "events_after": await feed.length(),
                "warm_ms_per_command": statistics.median(warm), "warm_p90_ms": sorted(warm)[int(len(warm) * 0.9)],
                "cold_first_command_ms": statistics.median(cold), "grow_seconds": grow_s,
                "commands_measured": len(warm), "conflicts": stats.conflicts,
                "reached_target": length >= target - 2}
    finally:
        worker.stop()
        await redis.flushall()
        await client.close()
