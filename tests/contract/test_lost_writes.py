"""A worker's cached state after Redis lost acknowledged writes.

A restart without fsync or an asynchronous failover can drop the tail of an
instance stream that a worker has already folded into its cache. If another
worker then appends as many events as were lost, the stream is back at the
cached version with a different history. These tests build exactly that by
hand (XDEL the tail, XADD a different one) and check that the engine decides
the next command on the stored history, never on the cached one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from engine.client import Client
from engine.core.model import WorkflowPaused, encode
from engine.errors import UnknownInstance
from engine.store.events import Store
from engine.store.keys import Keys
from engine.workers.engine import EngineWorker
from tests.support.helpers import check_history
from tests.support.poll import eventually, run

WAITING = {
    "name": "waits-forever", "version": "1",
    "definition": {"steps": [{"name": "wait", "step_type": "event_wait", "event_type": "never.happens"}]},
}


async def rewrite_tail(redis: Any, keys: Keys, iid: str, lost: int, replacement: list[bytes]) -> None:
    """Drop the last `lost` entries of the stream and append `replacement` events after what survives."""
    stream = keys.instance(iid)
    tail = await redis.xrevrange(stream, count=lost)
    await redis.xdel(stream, *[eid for eid, _ in tail])
    [(_, last)] = await redis.xrevrange(stream, count=1)
    version = int(last[b"version"])
    for data in replacement:
        version += 1
        await redis.xadd(stream, {"type": b"workflow.paused", "version": version, "ts": 1, "data": data})


async def is_waiting(client: Client, iid: str) -> bool:
    try:
        history = await client.history(iid)
    except UnknownInstance:
        return False
    return any(e["type"] == "workflow.step_waiting" for e in history)


@contextlib.asynccontextmanager
async def one_waiting_instance(factory: Any, settings: Any) -> AsyncIterator[tuple[Client, EngineWorker, str]]:
    """One engine worker running, and one instance it has decided up to its event wait (cached)."""
    client = Client(factory(), settings)
    worker = EngineWorker(factory(), settings)
    await worker.prepare()
    task = asyncio.create_task(worker.run())
    try:
        await client.register(WAITING)
        iid = await client.start("waits-forever", {})

        async def waiting() -> bool:
            return await is_waiting(client, iid)

        await eventually(waiting)
        yield client, worker, iid
    finally:
        worker.stop()
        await task
        await client.close()


def test_same_version_different_history_is_reloaded(cluster_backend: Any) -> None:
    """Cached: ... step_waiting (version n). Stored after the loss: ... paused (version n).
    A resume must be decided on the stored history: it resumes, not 'not paused'."""
    factory, settings = cluster_backend

    async def scenario() -> None:
        async with one_waiting_instance(factory, settings) as (client, worker, iid):
            cached = worker.cache.get(iid)
            assert cached is not None
            before = await client.history(iid)

            redis = factory()
            await rewrite_tail(redis, worker.keys, iid, 1, [encode(WorkflowPaused(reason="decided elsewhere"))])
            after_loss = await client.history(iid)
            assert after_loss[-1]["version"] == before[-1]["version"] == cached[0].version
            assert after_loss[-1]["type"] == "workflow.paused"

            await client.resume(iid)

            async def resumed() -> list[dict[str, Any]]:
                h = await client.history(iid)
                return h if len(h) > len(after_loss) else []

            history = await eventually(resumed)
            new = [e["type"] for e in history[len(after_loss):]]
            assert new[0] == "workflow.resumed", new
            assert "workflow.command_rejected" not in new, history[len(after_loss):]
            check_history(history)
            assert worker.stats.diverged >= 1
            await redis.aclose()

    run(scenario())


def test_catch_up_from_a_tail_that_does_not_continue_the_cache_replays(cluster_backend: Any) -> None:
    """Cached at version n; the stream lost its last two entries and then grew three
    different ones (version n+1). Catching up from the cached tail would fold
    versions n-1..n+1 on top of n; the store replays from the start instead."""
    factory, settings = cluster_backend

    async def scenario() -> None:
        redis = factory()
        keys = Keys(settings.prefix, settings.partitions)
        async with one_waiting_instance(factory, settings) as (_, worker, iid):
            state, last = worker.cache.get(iid)  # type: ignore[misc]
        try:
            paused = encode(WorkflowPaused(reason="x"))
            await rewrite_tail(redis, keys, iid, 2, [paused, paused, paused])
            store = Store(redis, keys)
            [loaded] = await store.load_many([(iid, state, last)])
            assert not isinstance(loaded, Exception), loaded
            caught_up, new_last = loaded
            truth = await store.load(iid)
            assert caught_up.version == truth.version == state.version + 1
            assert caught_up.status == truth.status == "paused"
            assert caught_up.steps == truth.steps
            [(tail_id, _)] = await redis.xrevrange(keys.instance(iid), count=1)
            assert new_last == tail_id.decode()
        finally:
            await redis.aclose()

    run(scenario())
