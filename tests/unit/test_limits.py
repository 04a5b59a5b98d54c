"""Per-service limits, the store side (engine/store/limits.py, scripts/limits.lua) on
fakeredis (tests/contract/test_limits_store.py runs the same tests on a real
redis-server): in-flight permits (acquire, idempotent per
task id, renew, release, expiry of a dead worker's permits), the token bucket's
refill (time controlled by writing the bucket's last refill relative to the Redis
clock), the waiting entries, and the parsing of the API's limit objects."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import fakeredis
import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from engine.config import Settings
from engine.core.model import Task
from engine.runtime.metrics import WorkflowMetrics
from engine.store.keys import Keys
from engine.store.limits import (
    InvalidLimits,
    Limits,
    LimitStore,
    Rate,
    limits_runner,
    limits_view,
    parse_limits,
    parse_rate_text,
)
from engine.workers.limits import ServiceLimits

Backend = tuple[Callable[[], aioredis.Redis], Settings]


@pytest.fixture
def cluster_backend(prefix: str) -> Backend:
    """fakeredis here; the contract tier overrides this with the conftest's real-and-fake one."""
    server = fakeredis.FakeServer()
    return (lambda: fakeredis.FakeAsyncRedis(server=server)), Settings(prefix=prefix, partitions=4)


def _store(backend: Backend) -> LimitStore:
    factory, settings = backend
    return LimitStore(limits_runner(factory()), Keys(settings.prefix, settings.partitions))


def _run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_in_flight_permits_are_counted_per_task_and_idempotent(cluster_backend: Backend) -> None:
    async def go() -> None:
        store = _store(cluster_backend)
        two = Limits(in_flight=2, lease_ms=60_000)
        assert await store.acquire("svc", "t1", two, b"{}", 50) == (0, "")
        assert await store.acquire("svc", "t2", two, b"{}", 50) == (0, "")
        assert await store.acquire("svc", "t1", two, b"{}", 50) == (0, ""), "a redelivery re-uses its permit"
        wait, reason = await store.acquire("svc", "t3", two, b'{"step": "s"}', 50)
        assert (wait, reason) == (50, "in_flight")
        seen = await store.waiting("svc", "t3")
        assert seen is not None and seen.reason == "in_flight" and seen.info == {"step": "s"}
        usage = await store.usage("svc", two)
        assert (usage.in_flight, usage.waiting_in_flight, usage.waiting_rate, usage.tokens) == (2, 1, 0, None)
        await store.release("svc", "t1")
        assert await store.acquire("svc", "t3", two, b"{}", 50) == (0, "")
        assert await store.waiting("svc", "t3") is None, "running clears its waiting entry"
        assert (await store.usage("svc", two)).in_flight == 2

    _run(go())


def test_a_dead_workers_permits_lapse_after_their_lease_and_renewal_keeps_them(cluster_backend: Backend) -> None:
    async def go() -> None:
        store = _store(cluster_backend)
        one = Limits(in_flight=1, lease_ms=1_000)
        short = Limits(in_flight=1, lease_ms=150)
        assert await store.acquire("svc", "dead", short, b"{}", 50) == (0, "")
        assert (await store.acquire("svc", "next", one, b"{}", 50))[1] == "in_flight"
        await asyncio.sleep(0.3)  # the holder died: nobody renews its 150 ms lease
        assert await store.acquire("svc", "next", one, b"{}", 50) == (0, "")
        for _ in range(3):  # renewed while it runs: held past its first lease
            await asyncio.sleep(0.1)
            await store.renew("svc", "next", 300)
        assert (await store.acquire("svc", "other", one, b"{}", 50))[1] == "in_flight"
        assert (await store.usage("svc", one)).in_flight == 1

    _run(go())


def test_token_bucket_refills_continuously_up_to_its_capacity(cluster_backend: Backend) -> None:
    async def go() -> None:
        store = _store(cluster_backend)
        keys = store.keys.limit_keys("api")
        ten = Limits(rate=Rate(limit=10, per_ms=1_000))
        for i in range(10):
            assert await store.acquire("api", f"t{i}", ten, b"{}", 50) == (0, ""), i
        wait, reason = await store.acquire("api", "t10", ten, b"{}", 50)
        assert reason == "rate" and 1 <= wait <= 100, wait  # one token every 100 ms
        now = (await store.usage("api", ten)).now_ms
        # Controlled time: the bucket was last refilled 450 ms ago with 0.5 tokens: 5 now.
        await store.redis.hset(keys[1], mapping={"tokens": "0.5", "at": now - 450})
        usage = await store.usage("api", ten)
        assert usage.tokens is not None and 4.9 <= usage.tokens <= 5.2, usage
        await store.redis.hset(keys[1], mapping={"tokens": "3", "at": now - 3_600_000})
        assert (await store.usage("api", ten)).tokens == 10, "capacity is the limit"
        await store.redis.hset(keys[1], mapping={"tokens": "0.25", "at": now + 10_000})  # a clock that went back
        wait, reason = await store.acquire("api", "t11", ten, b"{}", 50)
        assert reason == "rate" and 70 <= wait <= 75, wait  # 0.75 of a token at 10 per 1 s
        assert (await store.usage("api", ten)).waiting_rate == 2

    _run(go())


def test_both_limits_a_task_waiting_for_a_permit_takes_no_token(cluster_backend: Backend) -> None:
    async def go() -> None:
        store = _store(cluster_backend)
        both = Limits(in_flight=1, rate=Rate(limit=3, per_ms=60_000))
        assert await store.acquire("s", "a", both, b"{}", 50) == (0, "")
        for _ in range(5):
            assert (await store.acquire("s", "b", both, b"{}", 50))[1] == "in_flight"
        tokens = (await store.usage("s", both)).tokens
        assert tokens is not None and 1.99 < tokens < 2.1, tokens
        await store.release("s", "a")
        assert await store.acquire("s", "b", both, b"{}", 50) == (0, "")
        await store.release("s", "b")
        assert await store.acquire("s", "c", both, b"{}", 50) == (0, "")
        await store.release("s", "c")
        assert (await store.acquire("s", "d", both, b"{}", 50))[1] == "rate"

    _run(go())


def test_waiting_entries_keep_their_since_and_stale_ones_are_dropped(cluster_backend: Backend) -> None:
    async def go() -> None:
        store = _store(cluster_backend)
        one = Limits(in_flight=1)
        await store.acquire("s", "a", one, b"{}", 50)
        await store.acquire("s", "b", one, b"{}", 50)
        first = await store.waiting("s", "b")
        await asyncio.sleep(0.02)
        await store.acquire("s", "b", one, b"{}", 50)
        again = await store.waiting("s", "b")
        assert first is not None and again is not None
        assert again.since_ms == first.since_ms and again.seen_ms > first.seen_ms
        await store.redis.hset(store.keys.limit_keys("s")[2], "gone", "in_flight\n1\n1\n{}")  # its worker died
        assert (await store.usage("s", one)).waiting_in_flight == 1
        assert await store.waiting("s", "gone") is None
        await store.unwait("s", "b")
        assert (await store.usage("s", one)).waiting_in_flight == 0

    _run(go())


def test_config_put_get_remove_bumps_the_version(cluster_backend: Backend) -> None:
    async def go() -> None:
        store = _store(cluster_backend)
        assert await store.version() == 0 and await store.all() == {}
        await store.put("planning-system", parse_limits({"in_flight": 5, "rate": {"limit": 100, "per": "1m"}}))
        assert await store.version() == 1
        got = await store.get("planning-system")
        assert got == Limits(in_flight=5, rate=Rate(limit=100, per_ms=60_000))
        assert list(await store.all()) == ["planning-system"]
        assert await store.remove("planning-system") and not await store.remove("planning-system")
        assert await store.version() == 2 and await store.get("planning-system") is None

    _run(go())


def test_parse_limits_names_every_bad_field() -> None:
    assert parse_limits({"in_flight": None, "rate": None}) == Limits()
    assert limits_view(parse_limits({"rate": {"limit": 10, "per": "1s"}, "lease": "2s"})) == {
        "in_flight": None, "rate": {"limit": 10, "per": "1s", "per_ms": 1000}, "lease": "2s", "lease_ms": 2000}
    with pytest.raises(InvalidLimits) as bad:
        parse_limits({"in_flight": 0, "rate": {"limit": -1, "per": "1y"}, "lease": "10ms", "burst": 3})
    paths = [p for p, _ in bad.value.problems]
    assert paths == ["burst", "in_flight", "rate.limit", "rate.per", "lease"]
    for body in ({"in_flight": 10**9}, {"in_flight": True}, {"in_flight": "5"}, {"rate": {"limit": 5, "per": "1ms"}},
                 {"rate": 5}, [1]):
        with pytest.raises(InvalidLimits):
            parse_limits(body)
    assert parse_rate_text("100/1m") == {"limit": 100, "per": "1m"}
    assert parse_rate_text("10/s") == {"limit": 10, "per": "1s"}
    with pytest.raises(InvalidLimits):
        parse_rate_text("fast")


# -- the worker side (engine/workers/limits.py) on fakeredis ---------------------------
def _task(n: int, service: str = "svc") -> Task:
    return Task(task_id=f"i{n}:s:1", instance_id=f"i{n}", step="s", attempt=1, reply_to="r", service=service,
                endpoint=None, input={}, context={}, entry_id=f"{n}-0", queue_key="{t:0}:tasks:svc")


def _limiter(backend: Backend) -> ServiceLimits:
    factory, settings = backend
    keys = Keys(settings.prefix, settings.partitions)
    return ServiceLimits(limits_runner(factory()), keys, group="activities", consumer="c", claim_idle_ms=300_000,
                         max_unslotted=2)


def test_waiting_tasks_hold_no_slot_and_a_release_wakes_them(cluster_backend: Backend) -> None:
    async def go() -> None:
        limiter = _limiter(cluster_backend)
        registry = CollectorRegistry()
        limiter.metrics = WorkflowMetrics(registry)
        labels = {"service": "svc", "reason": "in_flight"}
        await limiter.store.put("svc", Limits(in_flight=1))
        slots, stopping = asyncio.Semaphore(2), asyncio.Event()
        await slots.acquire()
        assert await limiter.admit(_task(1), slots, stopping)  # first call: the cache is read once for all
        await slots.acquire()
        waiter = asyncio.create_task(limiter.admit(_task(2), slots, stopping))
        await asyncio.sleep(0.2)
        assert not waiter.done() and limiter.waiting == {("svc", "in_flight"): 1} and limiter.waits == 1
        assert slots.locked() is False, "the waiting task gave its slot back"
        assert registry.get_sample_value("foldflow_limit_waiting_tasks", labels) == 1
        assert registry.get_sample_value("foldflow_limit_waits_total", labels) == 1
        await limiter.release("{t:0}:tasks:svc", "1-0")
        assert await asyncio.wait_for(waiter, 2.0)
        assert limiter.waiting == {("svc", "in_flight"): 0}
        assert registry.get_sample_value("foldflow_limit_waiting_tasks", labels) == 0
        assert (await limiter.store.usage("svc", Limits(in_flight=1))).in_flight == 1
        await limiter.release("{t:0}:tasks:svc", "2-0")
        assert (await limiter.store.usage("svc", Limits(in_flight=1))).in_flight == 0

    _run(go())


def test_concurrent_first_tasks_all_see_the_limits(cluster_backend: Backend) -> None:
    async def go() -> None:
        limiter = _limiter(cluster_backend)
        await limiter.store.put("svc", Limits(in_flight=1))
        slots, stopping = asyncio.Semaphore(8), asyncio.Event()
        for _ in range(4):
            await slots.acquire()
        admits = [asyncio.create_task(limiter.admit(_task(n), slots, stopping)) for n in range(4)]
        await asyncio.sleep(0.3)
        assert sum(a.done() for a in admits) == 1, "one permit, however many arrive before the cache is filled"
        stopping.set()
        assert sorted([await a for a in admits]) == [False, False, False, True]
        assert (await limiter.store.usage("svc", Limits(in_flight=1))).waiting_in_flight == 0, "stopped: unwaited"

    _run(go())


def test_unlimited_services_cost_no_round_trip_after_the_cached_check(cluster_backend: Backend) -> None:
    async def go() -> None:
        limiter = _limiter(cluster_backend)
        slots, stopping = asyncio.Semaphore(1), asyncio.Event()
        calls: list[str] = []
        real = limiter.store.runner.run

        async def counted(name: str, keys: Any, args: Any) -> Any:
            calls.append(name)
            return await real(name, keys, args)

        limiter.store.runner.run = counted  # type: ignore[method-assign]
        for n in range(50):
            assert await limiter.admit(_task(n, "free"), slots, stopping)
            await limiter.release("{t:0}:tasks:svc", f"{n}-0")
        assert calls == [] and limiter.waits == 0

    _run(go())


def test_past_max_unslotted_waiting_tasks_keep_their_slots(cluster_backend: Backend) -> None:
    async def go() -> None:
        limiter = _limiter(cluster_backend)  # max_unslotted=2
        await limiter.store.put("svc", Limits(in_flight=1))
        slots, stopping = asyncio.Semaphore(4), asyncio.Event()

        async def one(n: int) -> bool:
            await slots.acquire()  # as the read loop does before it starts a task
            return await limiter.admit(_task(n), slots, stopping)

        tasks = [asyncio.create_task(one(n)) for n in range(4)]
        await asyncio.sleep(0.3)
        assert sum(t.done() for t in tasks) == 1 and limiter._unslotted == 2
        assert slots._value == 2, "two waiters gave their slot back, the third keeps its own"
        stopping.set()
        assert sorted([await t for t in tasks]) == [False, False, False, True]

    _run(go())
