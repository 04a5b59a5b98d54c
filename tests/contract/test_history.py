"""Long and old histories: snapshots keep a cold load short, a long history is
flagged once, and finished instances' streams are retired after the retention
time while their history stays in the read models."""

from __future__ import annotations

from typing import Any

import msgspec

from engine.core.evolve import fold_stored
from engine.core.model import INITIAL
from engine.store.events import Store
from engine.store.keys import Keys
from tests.contract.test_language import _flow, echo_services
from tests.support.helpers import Cluster, check_history
from tests.support.poll import eventually, run


async def all_acknowledged(r: Any, streams: list[str]) -> bool:
    """Every group on each stream has read its last entry and acknowledged all it read."""
    for stream in streams:
        last = (await r.xinfo_stream(stream))["last-generated-id"]
        for group in await r.xinfo_groups(stream):
            if group["pending"] or group["last-delivered-id"] != last:
                return False
    return True


LOOP = _flow("long-loop", [{"name": "each", "type": "loop", "items": "{{ input.items }}", "service": "echo",
                            "max_iterations": 10_000}])


def test_snapshots_and_the_history_warning(cluster_backend: Any) -> None:
    factory, base = cluster_backend
    settings = msgspec.structs.replace(base, snapshot_every=20, history_warn_events=50)

    async def scenario() -> None:
        async with Cluster(factory, settings, echo_services()) as c:
            await c.client.register(LOOP)
            iid = await c.client.start("long-loop", {"items": list(range(40))})
            state = await c.client.wait(iid, timeout=60)
            assert state.status == "completed" and len(state.step("each").output["items"]) == 40
            history = await c.client.history(iid)
            check_history(history)
            warnings = [e for e in history if e["type"] == "workflow.history_large"]
            assert len(warnings) == 1 and warnings[0]["data"]["threshold"] == 50
            keys = Keys(settings.prefix, settings.partitions)
            p = keys.partition(iid)
            snap = await c.client.redis.hgetall(keys.snapshot(p, iid))
            assert int(snap[b"version"]) % 20 <= len(history) and int(snap[b"version"]) >= 20
            # A cold load from the snapshot plus the events after it equals a full replay.
            store = Store(c.client.redis, keys)
            ((loaded, last),) = await store.load_many([(iid, INITIAL, None)])
            full = fold_stored(INITIAL, [(e, ts) for _, e, ts in await store.read_events(iid)])
            assert loaded == full and last == history[-1]["entry_id"]

    run(scenario())


def test_finished_instances_are_retired(cluster_backend: Any) -> None:
    factory, base = cluster_backend
    settings = msgspec.structs.replace(base, retention_ms=1)

    async def scenario() -> None:
        async with Cluster(factory, settings, echo_services()) as c:
            await c.client.register(_flow("short", [{"name": "a", "type": "service_call", "service": "echo"}]))
            done = [await c.client.start("short", {}) for _ in range(5)]
            for iid in done:
                assert (await c.client.wait(iid)).status == "completed"
            keys = Keys(settings.prefix, settings.partitions)
            before = sum([await c.client.redis.exists(keys.instance(i)) for i in done])
            assert before == 5
            retired = sum([await w.retire() for w in c.workers])
            assert retired == 5
            assert sum([await c.client.redis.exists(keys.instance(i)) for i in done]) == 0
            for p in range(keys.partitions):
                assert await c.client.redis.zcard(keys.finished(p)) == 0

    run(scenario())


def test_inboxes_and_events_are_trimmed_only_below_what_was_processed(cluster_backend: Any) -> None:
    factory, base = cluster_backend
    settings = msgspec.structs.replace(base, event_retention_ms=1)

    async def scenario() -> None:
        async with Cluster(factory, settings, echo_services()) as c:
            c.agents.stop()
            await c.client.register(_flow("short", [{"name": "a", "type": "service_call", "service": "echo"}]))
            ids = [await c.client.start("short", {}) for _ in range(10)]
            for iid in ids:
                assert (await c.client.wait(iid)).status == "completed"
            for _ in range(3):
                await c.client.publish("noise", {"n": 1})
            keys = Keys(settings.prefix, settings.partitions)
            r = c.client.redis
            before = sum([await r.xlen(keys.inbox(p)) for p in range(keys.partitions)])
            assert before >= 20  # starts and results, all acknowledged
            streams = [keys.inbox(p) for p in range(keys.partitions)] + [keys.events]
            await eventually(lambda: all_acknowledged(r, streams), 20, "every group acknowledged everything")
            trimmed = sum([await w.trim() for w in c.workers])
            after = sum([await r.xlen(keys.inbox(p)) for p in range(keys.partitions)])
            assert trimmed >= before - after and after < before
            # an unprocessed command is never trimmed: add one no worker reads yet
            p0 = keys.partition(ids[0])
            for w in c.workers:
                w.stop()
            await eventually(lambda: all(t.done() for t in c.tasks[:len(c.workers)]), 20, "the engine workers stopped")
            entry = await c.client.send("cancel", ids[0], {})
            for w in c.workers:
                w.leases.owned = set(range(keys.partitions))
                await w.trim()
            assert [e for e, _ in await r.xrange(keys.inbox(p0))][-1].decode() == entry

    run(scenario())
