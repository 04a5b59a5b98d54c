"""Admission control end to end: real engine and activity worker processes on a real Redis.

Concurrency per key (limit 1 queue: the second runs after the first completes;
cancel_newest; cancel_oldest), priority (queued starts of one key are admitted highest
priority first) and tenant fairness (one tenant's flood of 300 queues behind its own
limit while another tenant's 10 run at once), through the Python client, the CLI and
raw XADDs."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from engine.client import Client
from engine.config import Settings
from engine.errors import UnknownInstance
from engine.ops.cli import main
from engine.store.keys import Keys
from tests.support.admission_support import (
    HANDLERS,
    definition,
    final_of,
    slots_left,
    start_many,
    started_ms,
)
from tests.support.fault_support import Procs, histories
from tests.support.poll import eventually, run
from tests.support.tools import CRASH_KNOBS, foldflow_env

pytestmark = pytest.mark.redis


@pytest.fixture
def stack(settings: Settings, tmp_path: Path) -> Iterator[Procs]:
    procs = Procs(foldflow_env(settings, CRASH_KNOBS, FOLDFLOW_CONCURRENCY="32"), tmp_path)
    procs.start("w", "worker")
    procs.start("a", "activities", "--module", HANDLERS)
    try:
        yield procs
    finally:
        procs.kill_all()


async def _status(client: Client, iid: str) -> str:
    try:
        return str((await client.status(iid))["status"])
    except UnknownInstance:
        return "none"


async def _wait_status(client: Client, iid: str, want: str, timeout: float = 20) -> None:
    async def check() -> bool:
        return (await client.state(iid)).status == want
    await eventually(check, timeout, f"{iid} {want}", interval=0.05)


def _cli(settings: Settings, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    capsys.readouterr()
    code = main([*args, "--redis-url", settings.redis_url, "--prefix", settings.prefix,
                 "--partitions", str(settings.partitions)])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_limit_one_queue_runs_the_second_after_the_first(settings: Settings, stack: Procs,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    async def scenario() -> None:
        client = Client(aioredis.Redis.from_url(settings.redis_url), settings)
        try:
            await client.register(definition("one-per-user", "{{ input.user }}", 1))
            await client.start("one-per-user", {"user": "u1", "ms": 600}, instance_id="first")
            await _wait_status(client, "first", "running")
            await client.start("one-per-user", {"user": "u1", "ms": 20}, instance_id="second")
            await client.start("one-per-user", {"user": "u2", "ms": 20}, instance_id="other-user")
            await _wait_status(client, "second", "queued")
            await _wait_status(client, "other-user", "completed")  # another key is not held up
            assert await _status(client, "first") == "running"
            await _wait_status(client, "second", "completed")
            hist = await histories(client.redis, Keys(settings.prefix, settings.partitions), ["first", "second"])
            first_end, second_start = final_of(hist["first"]), started_ms(hist["second"])
            assert first_end is not None and first_end["type"] == "workflow.completed"
            assert second_start is not None and second_start >= first_end["ts"]
            assert [e["type"] for e in hist["second"]][:3] == ["workflow.created", "workflow.queued",
                                                              "workflow.started"]
            assert await slots_left(client.redis, Keys(settings.prefix, settings.partitions)) == {}
        finally:
            await client.close()

    run(scenario())
    # the CLI: a start with priority and tenant, recorded in workflow.created
    iid = _cli(settings, capsys, "start", "one-per-user", "--context", '{"user": "u3"}', "--priority", "4",
               "--tenant", "acme").strip()
    out = json.loads(_cli(settings, capsys, "history", iid))
    created = out[0] if isinstance(out, list) else out["events"][0]
    assert (created["data"]["priority"], created["data"]["tenant"]) == (4, "acme"), created


def test_cancel_newest_and_cancel_oldest(settings: Settings, stack: Procs) -> None:
    async def scenario() -> None:
        client = Client(aioredis.Redis.from_url(settings.redis_url), settings)
        try:
            await client.register(definition("newest", "{{ input.user }}", 1, "cancel_newest"))
            await client.register(definition("oldest", "{{ input.user }}", 1, "cancel_oldest"))
            await client.start("newest", {"user": "u1", "ms": 2000}, instance_id="n1")
            await _wait_status(client, "n1", "running")
            await client.start("newest", {"user": "u1", "ms": 20}, instance_id="n2")
            await _wait_status(client, "n2", "cancelled")
            hist = await histories(client.redis, Keys(settings.prefix, settings.partitions), ["n2"])
            reason = hist["n2"][-1]["data"]["reason"]
            assert "limit 1 for key 'u1'" in reason and "cancel_newest" in reason, reason
            assert await _status(client, "n1") == "running"

            await client.start("oldest", {"user": "u1", "ms": 2000}, instance_id="o1")
            await _wait_status(client, "o1", "running")
            await client.start("oldest", {"user": "u1", "ms": 20}, instance_id="o2")
            await _wait_status(client, "o1", "cancelled")
            await _wait_status(client, "o2", "completed")
            hist = await histories(client.redis, Keys(settings.prefix, settings.partitions), ["o1"])
            assert "newer instance o2 took its slot" in hist["o1"][-1]["data"]["reason"]
        finally:
            await client.close()

    run(scenario())


def test_queued_starts_of_one_key_are_admitted_highest_priority_first(settings: Settings, stack: Procs) -> None:
    order = [("p0-a", 0), ("p5", 5), ("p9-a", 9), ("p0-b", 0), ("p9-b", 9), ("p2", 2)]

    async def scenario() -> None:
        client = Client(aioredis.Redis.from_url(settings.redis_url), settings)
        keys = Keys(settings.prefix, settings.partitions)
        try:
            await client.register(definition("prio", "{{ tenant }}", 1))
            await client.start("prio", {"ms": 800}, instance_id="holder", tenant="t")
            await _wait_status(client, "holder", "running")
            for iid, priority in order:  # one at a time, so arrival order is the order sent
                await client.start("prio", {"ms": 20}, instance_id=iid, tenant="t", priority=priority)
                await _wait_status(client, iid, "queued")
            ids = [i for i, _ in order]
            for iid in ids:
                await _wait_status(client, iid, "completed")
            hist = await histories(client.redis, keys, ids)
            admitted = sorted(ids, key=lambda i: started_ms(hist[i]) or 0)
            print("admitted in order:", admitted)
            assert admitted == ["p9-a", "p9-b", "p5", "p2", "p0-a", "p0-b"]
        finally:
            await client.close()

    run(scenario())


def test_one_tenants_flood_does_not_starve_another(settings: Settings, stack: Procs) -> None:
    """Tenant A starts 300 instances of a 20 ms step, tenant B 10 right after; with
    concurrency {key: "{{ tenant }}", limit: 4, on_limit: queue} B's 10 complete while
    most of A's are still queued (order and counts, not wall time)."""
    a_ids = [f"a-{i}" for i in range(300)]
    b_ids = [f"b-{i}" for i in range(10)]

    async def scenario() -> dict[str, Any]:
        redis = aioredis.Redis.from_url(settings.redis_url)
        client = Client(redis, settings)
        keys = Keys(settings.prefix, settings.partitions)
        try:
            await client.register(definition("fair", "{{ tenant }}", 4))
            t0 = time.monotonic()
            await start_many(redis, keys, "fair", [(i, {"tenant": "A"}) for i in a_ids])
            await start_many(redis, keys, "fair", [(i, {"tenant": "B"}) for i in b_ids])
            seen: dict[str, Any] = {}

            async def b_done() -> bool:
                hist = await histories(redis, keys, b_ids)
                return all(final_of(h) is not None for h in hist.values())
            await eventually(b_done, 60, "tenant B's 10 completed", interval=0.05)
            b_latency = time.monotonic() - t0
            a_hist = await histories(redis, keys, a_ids)
            seen["a_done_when_b_done"] = sum(final_of(h) is not None for h in a_hist.values())

            async def a_done() -> bool:
                hist = await histories(redis, keys, a_ids)
                return all(final_of(h) is not None for h in hist.values())
            await eventually(a_done, 120, "tenant A's 300 completed", interval=0.2)
            a_latency = time.monotonic() - t0
            hist = await histories(redis, keys, a_ids + b_ids)
            seen["last_b_final"] = max(final_of(hist[i])["ts"] for i in b_ids)  # type: ignore[index]
            seen["last_a_final"] = max(final_of(hist[i])["ts"] for i in a_ids)  # type: ignore[index]
            seen["statuses"] = {h[-1]["type"] for h in hist.values()}
            print(f"tenant B's 10 done after {b_latency:.2f} s (A had {seen['a_done_when_b_done']}/300 done); "
                  f"tenant A's 300 done after {a_latency:.2f} s")
            return seen
        finally:
            await client.close()

    seen = run(scenario())
    assert seen["statuses"] == {"workflow.completed"}
    assert seen["a_done_when_b_done"] < 150, seen  # B did not wait behind A's flood
    assert seen["last_b_final"] < seen["last_a_final"]
