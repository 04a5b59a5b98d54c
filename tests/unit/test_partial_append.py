"""One append.lua call of a batch fails in transit while the others get through
(on Redis Cluster: the node of one partition failing over). The decisions that
got through must still get their follow-ups (the state cache, the catch-up of
the event waits they registered), and the failed ones stay pending, whole or
not applied at all. Simulated on fakeredis by failing the calls of one partition.
"""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

import engine.store.lua as store_module
from engine.client import Client
from engine.config import Settings
from engine.core.model import StepWaiting
from engine.errors import StoreUnavailable
from engine.store.events import AppendOutcome
from engine.store.keys import ENGINE_GROUP, Keys
from engine.workers.engine import EngineWorker
from tests.support.poll import run

WAITS = {"name": "waits", "version": "1",
         "definition": {"steps": [{"name": "w", "step_type": "event_wait", "event_type": "some.event",
                                   "event_filter": {"k": "${context.k}"}}]}}


def failing_partition(real: Any, keys: Keys, p: int) -> Any:
    """evalsha_many that fails, in transit, every append.lua call of partition p."""
    async def evalsha_many(redis: Any, sha: str, source: bytes, calls: Any, wait: Any = None) -> list[Any]:
        keep = [i for i, (ks, _) in enumerate(calls) if ks[1] != keys.inbox(p)]
        replies = await real(redis, sha, source, [calls[i] for i in keep], wait) if keep else []
        out: list[Any] = [RedisConnectionError("node of partition %d is failing over" % p)] * len(calls)
        for i, reply in zip(keep, replies):
            out[i] = reply
        return out
    return evalsha_many


def two_instances_in_two_partitions(keys: Keys) -> tuple[str, str]:
    ids = [f"pa-{i}" for i in range(100)]
    first = ids[0]
    other = next(i for i in ids if keys.partition(i) != keys.partition(first))
    return first, other


def test_the_calls_that_got_through_keep_their_follow_ups(prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(prefix=prefix, partitions=4, block_ms=50, breaker_threshold=0)
    server = fakeredis.FakeServer()

    async def scenario() -> None:
        client = Client(fakeredis.FakeAsyncRedis(server=server), settings)
        worker = EngineWorker(fakeredis.FakeAsyncRedis(server=server), settings)
        await worker.prepare()
        await worker.rebalance()  # takes the partitions' leases: appends are fenced
        assert worker.leases.owned == set(range(settings.partitions))
        keys = worker.keys
        ok_id, failed_id = two_instances_in_two_partitions(keys)
        await client.register(WAITS)
        for iid in (ok_id, failed_id):
            await client.start("waits", {"k": iid}, instance_id=iid)
        caught: list[tuple[str, StepWaiting]] = []

        async def catch_up(waits: list[Any]) -> None:
            caught.extend((iid, wait) for iid, wait, _, _, _ in waits)

        monkeypatch.setattr(worker.catchups, "catch_up", catch_up)
        monkeypatch.setattr(store_module, "evalsha_many",
                            failing_partition(store_module.evalsha_many, keys, keys.partition(failed_id)))
        entries = []
        for p in range(keys.partitions):
            reply = await worker.redis.xreadgroup(ENGINE_GROUP, worker.consumer, {keys.inbox(p): ">"})
            entries += [(keys.inbox(p), e.decode(), f) for _, rows in reply for e, f in rows]
        assert len(entries) == 2
        with pytest.raises(StoreUnavailable, match="failing over"):
            await worker.process(entries)
        # the decision that got through: written, cached, and its wait caught up
        assert (await client.state(ok_id)).status == "running"
        assert worker.cache.get(ok_id) is not None
        assert [(iid, w.step) for iid, w in caught] == [(ok_id, "w")]
        # the one that did not: nothing written, its entry still pending for a retry
        assert (await client.state(failed_id)).status == "none"
        assert worker.cache.get(failed_id) is None
        pending = await worker.redis.xpending(keys.inbox(keys.partition(failed_id)), ENGINE_GROUP)
        assert pending["pending"] == 1
        await client.close()
        await worker.redis.aclose()

    run(scenario())


def test_append_many_reports_each_failed_call(prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """UNAVAILABLE for the decisions of a failed call, in request order; StoreUnavailable only
    when no call got through."""
    from engine.core.model import WorkflowStarted
    from engine.store.events import AppendRequest, Store
    from engine.store.plan import Effects

    keys = Keys(prefix, 4)

    async def scenario() -> None:
        store = Store(fakeredis.FakeAsyncRedis(), keys)
        await store.load_scripts()
        ok_id, failed_id = two_instances_in_two_partitions(keys)
        monkeypatch.setattr(store_module, "evalsha_many",
                            failing_partition(store_module.evalsha_many, keys, keys.partition(failed_id)))
        reqs = [AppendRequest(i, keys.partition(i), 0, [], [WorkflowStarted()], Effects(), 1)
                for i in (failed_id, ok_id)]
        results = await store.append_many(reqs, ENGINE_GROUP, "c1")
        assert [r.outcome for r in results] == [AppendOutcome.UNAVAILABLE, AppendOutcome.OK]
        with pytest.raises(StoreUnavailable):
            await store.append_many(reqs[:1], ENGINE_GROUP, "c1")
        await store.redis.aclose()

    run(scenario())
