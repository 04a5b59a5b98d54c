"""Schedules under SIGKILL: two engine worker processes run a 1 s schedule while one or both
are killed again and again. Every fire time from the schedule's creation to the end of the
chaos is started exactly once (one instance per fire time, one workflow.started in each),
no fire time inside the catch-up window is missed, and no instance exists for a time that
is not a fire time. Starts a claim re-sent after a kill show up as repeated start commands
in the inboxes (counted and printed): the instance id makes them no-ops."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from engine.client import Client
from engine.config import Settings
from engine.core.schedules import Schedule, execution_id, fire_times
from engine.dev.embedded import RedisServer, free_port
from engine.store.catalog import Catalog
from engine.store.events import Store
from engine.store.keys import Keys
from engine.store.schedule_ops import ScheduleOps
from engine.store.schedules import ScheduleStore
from tests.support.fault_support import TWO_STEPS, Procs, histories
from tests.support.poll import eventually, run
from tests.support.tools import foldflow_env

pytestmark = pytest.mark.redis
KNOBS = {"FOLDFLOW_SCHEDULE_POLL_MS": "100", "FOLDFLOW_LEASE_MS": "2000", "FOLDFLOW_BLOCK_MS": "100",
         "FOLDFLOW_CLAIM_IDLE_MS": "1000"}


async def _server_ms(redis: aioredis.Redis) -> int:
    sec, usec = await redis.time()
    return int(sec) * 1000 + int(usec) // 1000


async def _chaos(procs: Procs, seconds: float, rng: random.Random) -> int:
    kills = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        await asyncio.sleep(rng.uniform(0.6, 1.5))
        victims = rng.choice([["w1"], ["w2"], ["w1", "w2"]])
        for name in victims:
            procs.kill(name)
            kills += 1
        await asyncio.sleep(rng.uniform(0.2, 1.2))  # both down for a while, sometimes
        for name in victims:
            procs.start(name, "worker")
    return kills


async def _start_commands(redis: aioredis.Redis, keys: Keys, name: str) -> Counter[str]:
    sent: Counter[str] = Counter()
    for inbox in keys.all_inboxes():
        for _, fields in await redis.xrange(inbox):
            if fields.get(b"type") == b"start" and fields.get(b"id", b"").startswith(f"{name}@".encode()):
                sent[fields[b"id"].decode()] += 1
    return sent


def schedule_chaos(settings: Settings, tmp_path: Path, chaos_s: float, seed: int) -> None:
    keys = Keys(settings.prefix, settings.partitions)
    procs = Procs(foldflow_env(settings, KNOBS), tmp_path)

    async def main() -> None:
        redis = aioredis.Redis.from_url(settings.redis_url)
        client = Client(redis, settings)
        ops = ScheduleOps(ScheduleStore(redis, keys), Catalog(Store(redis, keys)))
        try:
            await client.register(TWO_STEPS)
            procs.start("w1", "worker")
            procs.start("w2", "worker")
            s = Schedule(name="chaos", workflow=TWO_STEPS["name"], every="1s", overlap="allow", catchup_window="1m")
            await ops.create(s)
            created = (await ops.store.found("chaos")).cursor_ms
            kills = await _chaos(procs, chaos_s, random.Random(seed))
            end = await _server_ms(redis)
            expected = [execution_id("chaos", t) for t in fire_times(s, created, end, 10_000)]

            async def all_started() -> bool:
                hist = await histories(redis, keys, expected)
                return all(any(e["type"] == "workflow.started" for e in h) for h in hist.values())
            await eventually(all_started, timeout=40, interval=0.5, what="every fire time started after the kills")
            hist = await histories(redis, keys, expected)
            starts = {iid: sum(e["type"] == "workflow.started" for e in h) for iid, h in hist.items()}
            sent = await _start_commands(redis, keys, "chaos")
            stray = sorted(i for i in sent if i not in set(expected) and i < execution_id("chaos", end))
            missing = [i for i in expected if starts.get(i, 0) == 0]
            doubled = [i for i in expected if starts.get(i, 0) > 1]
            resent = sum(n - 1 for n in sent.values())
            state = await ops.store.found("chaos")
            print(f"\nschedule chaos: {chaos_s:.0f}s, {kills} kills, {len(expected)} fire times, "
                  f"{sum(1 for n in starts.values() if n == 1)} started once, {len(missing)} missing, "
                  f"{len(doubled)} started twice, {resent} start commands re-sent (no-ops), "
                  f"counters {state.counters}")
            assert not missing and not doubled and not stray, (missing, doubled, stray)
            assert len(expected) >= chaos_s - 1
        finally:
            procs.kill_all()
            await redis.aclose()

    run(main())


def test_sigkill_engine_workers_during_a_1s_schedule(settings: Settings, tmp_path: Path) -> None:
    schedule_chaos(settings, tmp_path, chaos_s=6, seed=16)


def test_a_redis_restart_during_a_1s_schedule(tmp_path: Path, redis_server_bin: str) -> None:
    """A clean SHUTDOWN of an AOF Redis for ~2 s: the workers back off ("schedule poll
    skipped"), and after the restart the fire times of the outage (inside the catch-up
    window) start, each once."""
    server = RedisServer(free_port(), "--appendonly", "yes", "--appendfsync", "everysec")
    server.start()
    settings = Settings(redis_url=server.url, prefix="ffs", partitions=4)
    keys = Keys(settings.prefix, settings.partitions)
    procs = Procs(foldflow_env(settings, KNOBS), tmp_path)

    async def main() -> None:
        r = aioredis.Redis.from_url(server.url)
        await Client(r, settings).register(TWO_STEPS)
        ops = ScheduleOps(ScheduleStore(r, keys), Catalog(Store(r, keys)))
        s = Schedule(name="rr", workflow=TWO_STEPS["name"], every="1s", overlap="allow", catchup_window="1m")
        await ops.create(s)
        created = (await ops.store.found("rr")).cursor_ms
        procs.start("w1", "worker")
        procs.start("w2", "worker")
        await eventually(lambda: ops.store.found("rr"), 20, "a first start", ok=lambda st: st.counters["started"] >= 2)
        await r.aclose()
        with contextlib.suppress(redis.exceptions.ConnectionError):
            redis.Redis.from_url(server.url).shutdown()
        assert server.proc is not None
        server.proc.wait(10)
        await asyncio.sleep(2)
        server.start()
        r = aioredis.Redis.from_url(server.url)
        end = await _server_ms(r) + 2000
        expected = [execution_id("rr", t) for t in fire_times(s, created, end, 10_000)]

        async def all_started() -> bool:
            hist = await histories(r, keys, expected)
            return all(any(e["type"] == "workflow.started" for e in h) for h in hist.values())
        await eventually(all_started, timeout=40, interval=0.5, what="every fire time started after the restart")
        hist = await histories(r, keys, expected)
        doubled = [i for i, h in hist.items() if sum(e["type"] == "workflow.started" for e in h) > 1]
        print(f"\nredis restart: {len(expected)} fire times, all started, {len(doubled)} twice")
        assert not doubled
        assert any("schedule poll skipped" in procs.log(n) for n in ("w1", "w2"))
        await r.aclose()

    try:
        run(main())
    finally:
        procs.kill_all()
        server.stop()


@pytest.mark.slow
def test_sigkill_engine_workers_during_a_1s_schedule_long(settings: Settings, tmp_path: Path) -> None:
    schedule_chaos(settings, tmp_path, chaos_s=30, seed=1616)
