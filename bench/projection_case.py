"""Case 8, projections: projector events per second and lag p50/p99 while the
case-2 load runs. The projector is run as users run it (`foldflow projector`,
the Dockerfile's role name); its progress is read from Redis, not from its
code: every consumer group on the partition feeds is a projection, its lag in
time is how old the oldest feed entry it has not finished (pending, or not yet
delivered) is, sampled every 50 ms."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from typing import Any

import redis.asyncio as aioredis

from engine.client import Client
from engine.store.keys import Keys

from .foldflow_cases import QUEUE, STEPS, _count_completed, linear_definition, start_fields
from .harness import ROOT, Skip, bench_settings, foldflow_workers, percentile, wait_for_leases, wait_for_task_groups, worker_env


def available() -> None:
    """Raise Skip, saying why, unless a runnable projector exists."""
    probe = subprocess.run([sys.executable, "-m", "engine.ops.cli", "projector", "--help"], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        try:
            import projections

            have = sorted(p.stem for p in __import__("pathlib").Path(projections.__file__).parent.glob("*.py"))
        except Exception as exc:
            have = [f"(projections does not import: {exc})"]
        raise Skip("no runnable projector: `foldflow projector --help` failed "
                   f"({(probe.stderr.strip().splitlines() or ['?'])[-1][:200]}); projections/ holds {have}")


def _ms(entry_id: bytes | str) -> int:
    s = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(s.split("-")[0])


async def _lag_ms(redis: aioredis.Redis, keys: Keys) -> tuple[float, int]:
    """(worst lag in ms over feeds and groups, entries read by all groups)."""
    now_s, now_us = await redis.time()
    now = now_s * 1000 + now_us // 1000
    worst, read = 0.0, 0
    for p in range(keys.partitions):
        feed = keys.feed(p)
        for g in await redis.xinfo_groups(feed):
            read += int(g.get("entries-read") or 0)
            oldest = None
            if int(g["pending"]):
                summary = await redis.xpending(feed, g["name"])
                if summary.get("min"):  # None when acked since XINFO answered
                    oldest = _ms(summary["min"])
            nxt = await redis.xrange(feed, min=f"({g['last-delivered-id'].decode()}", max="+", count=1)
            if nxt:
                oldest = min(oldest or 1 << 62, _ms(nxt[0][0]))
            if oldest is not None:
                worst = max(worst, now - oldest)
    return worst, read


async def run(url: str, instances: int, timeout: float = 600.0) -> dict[str, Any]:
    settings = bench_settings(url)
    keys = Keys(settings.prefix, settings.partitions)
    redis = aioredis.Redis.from_url(url)
    client = Client(redis, settings)
    await client.register(linear_definition())
    projector = subprocess.Popen([sys.executable, "-m", "engine.ops.cli", "projector"], env=worker_env(settings),
                                 cwd=ROOT, stderr=subprocess.PIPE)
    try:
        with foldflow_workers(settings, 1, 1):
            await wait_for_leases(redis, keys, 1)
            await wait_for_task_groups(redis, keys, QUEUE)
            await asyncio.sleep(1.0)
            if projector.poll() is not None:
                raise Skip(f"foldflow projector exited with {projector.returncode}: "
                           f"{(projector.stderr.read() if projector.stderr else b'').decode()[-300:]}")
            _, read0 = await _lag_ms(redis, keys)
            t0 = time.perf_counter()
            pipe = redis.pipeline(transaction=False)
            for i in range(instances):
                iid = f"p-{i}"
                pipe.xadd(keys.inbox(keys.partition(iid)), start_fields(iid, "bench-linear"))
            await pipe.execute()
            cursors = {keys.feed(p): "0-0" for p in range(keys.partitions)}
            load = asyncio.create_task(_count_completed(aioredis.Redis.from_url(url), keys, instances, cursors,
                                                        t0 + timeout))
            lags: list[float] = []
            while True:
                lag, read = await _lag_ms(redis, keys)
                lags.append(lag)
                if load.done() and lag == 0:
                    break
                if time.perf_counter() - t0 > timeout:
                    raise TimeoutError("projector did not catch up")
                await asyncio.sleep(0.05)
            await load
            caught_up = time.perf_counter() - t0
        events = read - read0
        return {"instances": instances, "steps": instances * STEPS, "events_projected": events,
                "events_per_s": events / caught_up, "seconds_to_catch_up": caught_up,
                "lag_p50_ms": percentile(lags, 50), "lag_p99_ms": percentile(lags, 99), "lag_max_ms": max(lags)}
    finally:
        projector.terminate()
        try:
            projector.wait(20)
        except subprocess.TimeoutExpired:
            projector.kill()
        await redis.flushall()
        await client.close()
