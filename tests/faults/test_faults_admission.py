"""Admission control under SIGKILL: two engine worker processes are killed again and again
while 200 instances (4 keys, limit 3 per key, on_limit queue, a 30 ms step) flow through.
At the end every instance completed exactly once (histories checked), never more than 3
ran at once per key (the intervals from workflow.started to the final event, read from the
histories), no slot is left held and nothing is left queued (the reconciler frees what a
kill between an append and its release leaked)."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from engine.client import Client
from engine.config import Settings
from engine.store.keys import Keys
from tests.support.admission_support import (
    HANDLERS,
    definition,
    final_of,
    most_running_per_key,
    slots_left,
    start_many,
)
from tests.support.fault_support import Procs, check_all, histories, last_types
from tests.support.poll import eventually, run
from tests.support.tools import FAULT_KNOBS, foldflow_env

pytestmark = pytest.mark.redis
LIMIT = 3


async def _chaos(procs: Procs, seconds: float, rng: random.Random) -> int:
    kills = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        await asyncio.sleep(rng.uniform(0.3, 1.0))
        victims = rng.choice([["w1"], ["w2"], ["w1", "w2"]])
        for name in victims:
            procs.kill(name)
            kills += 1
        await asyncio.sleep(rng.uniform(0.1, 0.8))
        for name in victims:
            procs.start(name, "worker")
    return kills


def admission_chaos(settings: Settings, tmp_path: Path, n: int, keys_n: int, chaos_s: float, seed: int) -> None:
    keys = Keys(settings.prefix, settings.partitions)
    procs = Procs(foldflow_env(settings, FAULT_KNOBS, FOLDFLOW_CONCURRENCY="32"), tmp_path)
    ids = [f"adm-{i}" for i in range(n)]
    groups = {f"k{k}": [i for j, i in enumerate(ids) if j % keys_n == k] for k in range(keys_n)}
    rng = random.Random(seed)

    async def main() -> None:
        redis = aioredis.Redis.from_url(settings.redis_url)
        client = Client(redis, settings)
        try:
            await client.register(definition("adm-chaos", "{{ input.user }}", LIMIT))
            procs.start("w1", "worker")
            procs.start("w2", "worker")
            procs.start("a", "activities", "--module", HANDLERS)
            starts = [(iid, {"context": {"user": f"k{j % keys_n}", "ms": 30}, "priority": rng.randint(0, 9)})
                      for j, iid in enumerate(ids)]
            chaos = asyncio.create_task(_chaos(procs, chaos_s, rng))
            for lo in range(0, n, 20):  # starts keep arriving while the workers die
                await start_many(redis, keys, "adm-chaos", starts[lo: lo + 20])
                await asyncio.sleep(chaos_s / (n / 20) / 2)
            kills = await chaos

            async def all_final() -> bool:
                hist = await histories(redis, keys, ids)
                return all(final_of(h) is not None for h in hist.values())
            await eventually(all_final, 120, "every instance final", interval=0.5)
            hist = await histories(redis, keys, ids)
            assert last_types(hist) == {"workflow.completed": n}, last_types(hist)
            totals = check_all(hist)
            most = await most_running_per_key(redis, keys, groups)

            async def no_slot_left() -> bool:
                return await slots_left(redis, keys) == {}
            await eventually(no_slot_left, 30, "no slot held, nothing queued", interval=0.5)
            dead = sum([await redis.xlen(keys.dlq(p)) for p in range(keys.partitions)])
            assert dead == 0, "nothing was dead-lettered (an admit that overtook its start is acknowledged)"
            queued = sum(any(e["type"] == "workflow.queued" for e in h) for h in hist.values())
            print(f"{n} instances, {kills} kills, {queued} queued at start, most running per key {most}, "
                  f"{totals['events']} events")
            assert all(m <= LIMIT for m in most.values()), most
            assert max(most.values()) == LIMIT, "the limit was used"
        finally:
            await client.close()

    try:
        run(main())
    finally:
        procs.kill_all()


def test_slots_hold_and_never_leak_while_engine_workers_are_killed(settings: Settings, tmp_path: Path) -> None:
    admission_chaos(settings, tmp_path, n=200, keys_n=4, chaos_s=6.0, seed=16)


@pytest.mark.slow
def test_slots_hold_under_a_longer_chaos(settings: Settings, tmp_path: Path) -> None:
    admission_chaos(settings, tmp_path, n=1000, keys_n=8, chaos_s=30.0, seed=1616)
