"""Fault test with real processes: 2,000 instances (a tenth of them cancelled
while they run) go through two engine
worker processes and an activity worker while two projector processes project
them; one projector is SIGKILLed mid-run and another started in its place. The
read models converge to exactly a reference fold of every instance's stream:
no event lost, none applied twice (the lifecycle lists would show it)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from engine.client import Client
from engine.config import Settings
from engine.core.codec import command_fields
from engine.store.keys import Keys
from projections import PROJECTIONS, Queries
from projections.base import dumps
from projections.keys import ViewKeys, group_name
from projections.lifecycle import fold_context, lifecycle_event
from projections.listings import memberships
from projections.store import decode_entry
from tests.support.poll import eventually, run
from tests.support.tools import CRASH_KNOBS, foldflow_env, spawn

pytestmark = pytest.mark.redis
INSTANCES = 2000

DEFINITION = {
    "name": "proj-crash", "version": "1",
    "definition": {"steps": [
        {"name": "s1", "step_type": "service_call", "service": "agent-orchestrator", "endpoint": "/a",
         "sequence": 1, "retry_policy": {"max_attempts": 2, "backoff_base": 1, "backoff_multiplier": 10}},
        {"name": "s2", "step_type": "service_call", "service": "agent-orchestrator", "endpoint": "/b",
         "sequence": 2, "depends_on": ["s1"]},
    ]},
}


async def check_exact(redis: aioredis.Redis, settings: Settings, ids: list[str]) -> int:
    """Every view, lifecycle list and index entry equals the reference fold of the stream."""
    keys = Keys(settings.prefix, settings.partitions)
    vk = ViewKeys(keys)
    pipe = redis.pipeline(transaction=False)
    for iid in ids:
        p = keys.partition(iid)
        pipe.xrange(keys.instance(iid, p))
        pipe.hgetall(vk.view(p, iid))
        pipe.lrange(vk.lifecycle(p, iid), 0, -1)
    rows: list[Any] = await pipe.execute()
    index_members: dict[str, set[str]] = {}
    events = 0
    for i, iid in enumerate(ids):
        stream, view, lifecycle = rows[3 * i: 3 * i + 3]
        applied = [decode_entry(fields) for _, fields in stream]
        events += len(applied)
        for name, projection in PROJECTIONS.items():
            assert view[f"v:{name}".encode()] == str(len(applied)).encode(), (iid, name)
            assert view[name.encode()] == dumps(projection.fold_all(None, iid, applied)), (iid, name)
        ctx, want = None, []
        for a in applied:
            ctx = fold_context(ctx, iid, a)
            le = lifecycle_event(ctx, iid, a)
            if le is not None:
                want.append(dumps(le))
        assert lifecycle == want, iid
        for key in memberships(vk, keys.partition(iid), orjson.loads(view[b"executions"])):
            index_members.setdefault(key, set()).add(iid)
    for key, members in index_members.items():
        assert {m.decode() for m in await redis.zrange(key, 0, -1)} == members, key
    return events


def test_sigkill_a_projector_mid_run(settings: Settings, tmp_path: Path) -> None:
    env = {**foldflow_env(settings, CRASH_KNOBS), "FOLDFLOW_BATCH_SIZE": "128"}
    procs: dict[str, subprocess.Popen[bytes]] = {}

    async def scenario() -> None:
        redis = aioredis.Redis.from_url(settings.redis_url)
        client = Client(redis, settings)
        keys = Keys(settings.prefix, settings.partitions)
        queries = Queries(redis, settings)
        await client.register(DEFINITION)
        for name in ("w1", "w2"):
            procs[name] = spawn(["worker"], env, tmp_path / f"{name}.log")
        procs["a1"] = spawn(["activities", "--module", "engine.dev.demo_handlers"], env, tmp_path / "a1.log")
        procs["p1"] = spawn(["projector"], env, tmp_path / "p1.log")
        procs["p2"] = spawn(["projector"], env, tmp_path / "p2.log")
        ids = [f"pc-{i}" for i in range(INSTANCES)]
        pipe = redis.pipeline(transaction=False)
        for i, iid in enumerate(ids):
            data = {"workflow": "proj-crash", "version": "1", "context": {}, "correlation_id": f"c-{i % 10}"}
            pipe.xadd(keys.inbox(keys.partition(iid)), command_fields("start", iid, data, f"start:{iid}"))
            if i % 10 == 0:  # some are cancelled (or refused, when they finished first)
                pipe.xadd(keys.inbox(keys.partition(iid)), command_fields("cancel", iid, {}, f"cancel:{iid}"))
        await pipe.execute()
        deadline = time.monotonic() + 150
        async def finished() -> int:
            return await queries.count(status="completed") + await queries.count(status="cancelled")

        await eventually(finished, deadline - time.monotonic(), "a fifth projected before the kill",
                         ok=lambda n: n >= INSTANCES // 5)
        procs["p1"].send_signal(signal.SIGKILL)
        procs["p1"].wait()
        killed_at = await finished()
        procs["p3"] = spawn(["projector"], env, tmp_path / "p3.log")
        await eventually(finished, deadline - time.monotonic(), "every instance projected", interval=0.1,
                         ok=lambda n: n >= INSTANCES)
        assert killed_at < INSTANCES, "the kill came too late to test anything"

        async def drained() -> bool:
            for p in range(keys.partitions):
                for name in PROJECTIONS:
                    info = await redis.xpending(keys.feed(p), group_name(name))
                    if info["pending"]:
                        return False
            return True

        await eventually(drained, deadline - time.monotonic(), "no entries left pending", interval=0.1)
        events = await check_exact(redis, settings, ids)
        feed_total = sum([await redis.xlen(keys.feed(p)) for p in range(keys.partitions)])
        assert feed_total == events
        print(f"killed p1 at {killed_at}/{INSTANCES} projected; {events} events checked")
        await client.close()

    try:
        run(scenario())
        for name in ("w1", "w2", "a1", "p2", "p3"):
            procs[name].send_signal(signal.SIGTERM)
        for name in ("w1", "w2", "a1", "p2", "p3"):
            assert procs[name].wait(30) == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
