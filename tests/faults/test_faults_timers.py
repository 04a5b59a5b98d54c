"""Fault 5 of issue 5, timers and clocks (in-process workers on a real Redis).

- Several engine workers poll the timer sets at once: every timer fires exactly
  once (one `timer` command per cmd_id per instance in the inboxes), and a 2 s
  retry backoff waits ~2 s by the Redis clock (stream entry ids are Redis time).
- A worker whose clock is skewed: fire_timers.lua judges "due" by Redis TIME, so
  a skewed worker cannot fire anybody's timers early. But the decider stamps
  retry_at with the deciding worker's clock, so the retries *it* decides are
  shifted by its skew: +60 s waits 62 s instead of 2 s, -60 s retries at once.
  Instances decided by correctly-clocked workers are unaffected.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from typing import Any

import pytest
import redis.asyncio as aioredis

from engine.client import Client
from engine.config import Settings
from engine.core.model import Task
from engine.store.keys import Keys
from engine.workers.activities import ActivityWorker, Registry
from engine.workers.engine import EngineWorker, clock_ms
from tests.support.fault_support import check_all, histories, start_many
from tests.support.poll import eventually, run

pytestmark = pytest.mark.redis

BACKOFF_MS = 2000
TIMER_DEF = {
    "name": "fault-timers", "version": "1",
    "definition": {"steps": [
        {"name": "s1", "step_type": "service_call", "service": "flaky-once", "endpoint": "/x", "sequence": 1,
         "retry_policy": {"max_attempts": 3, "backoff_base": 1, "backoff_multiplier": BACKOFF_MS}},
    ]},
}


def registry() -> Registry:
    reg = Registry()

    @reg.handler("flaky-once")
    async def flaky(task: Task) -> dict[str, Any]:
        if task.attempt == 1:
            raise RuntimeError("first attempt fails")
        return {"ok": task.attempt}

    return reg


def _ms(entry_id: str) -> int:
    return int(entry_id.split("-")[0])


def retry_facts(h: list[dict[str, Any]]) -> dict[str, Any]:
    """Who decided the failure (clock skew = ts - Redis ms), and the retry's delay by the Redis clock."""
    failed = next(e for e in h if e["type"] == "workflow.step_failed")
    again = next((e for e in h if e["type"] == "workflow.step_scheduled" and e["data"]["attempt"] == 2), None)
    # "early": how long before its retry_at (by the Redis clock) the retry was scheduled. It
    # cannot depend on load: the timer is due by Redis TIME, and whatever delays the poller
    # only makes it later. (The delay from the failure's entry does depend on load: the
    # failure is stamped when decided, its entry id when written.)
    return {"skew": failed["ts"] - _ms(failed["entry_id"]),
            "planned": failed["data"]["retry_at"] - failed["ts"],
            "retry_at": failed["data"]["retry_at"],
            "due_when_written": failed["data"]["retry_at"] <= _ms(failed["entry_id"]),
            "early": failed["data"]["retry_at"] - _ms(again["entry_id"]) if again else None,
            "delay": _ms(again["entry_id"]) - _ms(failed["entry_id"]) if again else None}


def timer_run(settings: Settings, instances: int, skews: list[int], observe_s: float,
              finish: bool = False) -> dict[str, Any]:
    """finish: also wait until every instance completed (its retry ran, not only was scheduled)."""
    settings = Settings(redis_url=settings.redis_url, prefix=settings.prefix, partitions=6, block_ms=50,
                        timer_poll_ms=20, claim_idle_ms=1000, lease_ms=1000, breaker_threshold=0)

    async def scenario() -> dict[str, Any]:
        r = aioredis.Redis.from_url(settings.redis_url)
        client = Client(r, settings)
        keys = Keys(settings.prefix, settings.partitions)
        await client.register(TIMER_DEF)
        workers = [EngineWorker(aioredis.Redis.from_url(settings.redis_url), settings,
                                clock=(lambda s=s: clock_ms() + s)) for s in skews]
        for w in workers:
            await w.prepare()
        acts = ActivityWorker(aioredis.Redis.from_url(settings.redis_url), settings, registry=registry())
        tasks = [asyncio.create_task(w.run()) for w in workers] + [asyncio.create_task(acts.run())]
        # every worker holds partitions before the starts arrive
        await eventually(lambda: _all_hold(workers), 10, "every worker holds partitions")
        ids = [f"tm-{i}" for i in range(instances)]
        await start_many(r, keys, ids, TIMER_DEF["name"])

        async def failed_everywhere() -> bool:
            hist = await histories(r, keys, ids)
            return all(any(e["type"] == "workflow.step_failed" for e in h) for h in hist.values())

        await eventually(failed_everywhere, 20, "every first attempt failed")
        began = time.monotonic()
        on_time = [s for s in skews if s <= 0]

        async def settled() -> bool:
            hist = await histories(r, keys, ids)
            facts = [retry_facts(h) for h in hist.values()]
            # instances decided by a worker with a clock at or behind Redis retry within ~2 s
            done = not finish or all(h and h[-1]["type"] == "workflow.completed" for h in hist.values())
            return all(f["delay"] is not None for f in facts if nearest(f["skew"], skews) in on_time) and \
                time.monotonic() - began >= observe_s and done

        await eventually(settled, 30, "the retries that are due ran")
        hist = await histories(r, keys, ids)
        facts = {iid: retry_facts(h) for iid, h in hist.items()}
        inbox_timers: Counter[tuple[str, str]] = Counter()
        for p in range(keys.partitions):
            for _, f in await r.xrange(keys.inbox(p)):
                if f[b"type"] == b"timer":
                    inbox_timers[(f[b"id"].decode(), f[b"cmd_id"].decode())] += 1
        timers_left = sum([await r.zcard(keys.timers(p)) for p in range(keys.partitions)])
        for w in workers:
            w.stop()
        acts.stop()
        await asyncio.gather(*tasks)
        await client.close()
        return {"facts": facts, "inbox_timers": inbox_timers, "timers_left": timers_left, "hist": hist,
                "fired_by_worker": [w.timers.fired for w in workers]}

    return run(scenario())


async def _all_hold(workers: list[EngineWorker]) -> bool:
    return all(w.leases.owned for w in workers)


def nearest(observed_skew: int, skews: list[int]) -> int:
    """The configured skew of the worker that decided: observed = its skew minus the time from
    deciding to writing, which a loaded machine can stretch to hundreds of ms."""
    return min(skews, key=lambda s: abs(observed_skew - s))


def summary(facts: dict[str, dict[str, Any]], skews: list[int]) -> dict[int, dict[str, Any]]:
    by: dict[int, list[dict[str, Any]]] = {}
    for f in facts.values():
        by.setdefault(nearest(f["skew"], skews), []).append(f)
    out = {}
    for skew, fs in sorted(by.items()):
        delays = [f["delay"] for f in fs if f["delay"] is not None]
        out[skew] = {"instances": len(fs), "planned_ms": sorted({f["planned"] for f in fs}),
                     "retried": len(delays), "delay_ms": (min(delays), int(statistics.median(delays)), max(delays))
                     if delays else None}
    return out


def test_timers_fire_once_with_several_pollers(settings: Settings) -> None:
    out = timer_run(settings, instances=300, skews=[0, 0, 0], observe_s=0, finish=True)
    assert all(f["delay"] is not None for f in out["facts"].values())
    check_all(out["hist"])
    assert all(h[-1]["type"] == "workflow.completed" for h in out["hist"].values())
    # exactly one retry timer per instance reached the inboxes
    assert len(out["inbox_timers"]) == 300 and set(out["inbox_timers"].values()) == {1}, out["inbox_timers"]
    assert {c for _, c in out["inbox_timers"]} == {"timer:retry:s1:1"}
    assert out["timers_left"] == 0
    early = max(f["early"] for f in out["facts"].values())
    assert early <= 1, early  # never before retry_at by the Redis clock (1 ms: id vs TIME rounding)
    print("timers:", summary(out["facts"], [0]), "fired by worker:", out["fired_by_worker"])


@pytest.mark.parametrize("skew", [60_000, -60_000])
def test_a_skewed_worker_shifts_only_the_retries_it_decides(settings: Settings, skew: int) -> None:
    out = timer_run(settings, instances=200, skews=[0, skew], observe_s=3.0)
    s = summary(out["facts"], [0, skew])
    print(f"clock skew {skew:+d} ms:", s, "fired by worker:", out["fired_by_worker"])
    assert set(s) == {0, skew}, s  # both workers decided some failures
    honest = s[0]
    assert honest["retried"] == honest["instances"]
    assert max(f["early"] for f in out["facts"].values() if f["early"] is not None) <= 1
    skewed = s[skew]
    assert skewed["planned_ms"] == [BACKOFF_MS]  # planned on its own clock...
    if skew > 0:
        # ...so by the Redis clock it waits skew + backoff: none retried within the 3 s observed
        assert skewed["retried"] == 0
        assert out["timers_left"] == skewed["instances"]
    else:
        # ...so by the Redis clock the retry was already due when its failure was written:
        # no backoff at all
        assert skewed["retried"] == skewed["instances"]
        mine = [f for f in out["facts"].values() if nearest(f["skew"], [0, skew]) == skew]
        assert all(f["due_when_written"] for f in mine)
        assert not any(f["due_when_written"] for f in out["facts"].values() if f not in mine)
    assert all(n == 1 for n in out["inbox_timers"].values())
