"""No lost wake-up when the engine worker dies between registering an event wait and
looking for events published before it (streams.md, "No lost wake-ups").

The worker's look is simulated to die (it raises) right after the append that
registered the wait. The wait stays in ``{ff:p}:catchup``; the sweep of whoever
holds the partition (here the same worker, its clock past the grace period)
looks instead, and the instance completes with the early event.
"""

from __future__ import annotations

from typing import Any

import pytest

from engine.client import Client
from engine.store.keys import ENGINE_GROUP
from engine.workers.engine import CATCHUP_GRACE_MS, EngineWorker, clock_ms
from tests.support.helpers import check_history
from tests.support.poll import run

# The wait begins only after s: an event published in between (after the instance was
# created, before its wait exists) is what the catch-up is for.
EARLY = {"name": "early", "version": "1",
         "definition": {"steps": [
             {"name": "s", "step_type": "service_call", "service": "nobody-serves-this"},
             {"name": "w", "step_type": "event_wait", "event_type": "early.event",
              "event_filter": {"k": "${context.k}"}, "depends_on": ["s"]}]}}


async def drain_inboxes(worker: EngineWorker) -> int:
    """Read every partition inbox as this worker and decide what is there; how many entries."""
    n = 0
    for p in range(worker.keys.partitions):
        reply = await worker.redis.xreadgroup(ENGINE_GROUP, worker.consumer, {worker.keys.inbox(p): ">"}, count=100)
        entries = [(worker.keys.inbox(p), eid.decode(), fields) for _, rows in reply for eid, fields in rows]
        if entries:
            await worker.process(entries)
            n += len(entries)
    return n


async def one_worker(factory: Any, settings: Any) -> tuple[Client, EngineWorker]:
    """A client, and an engine worker holding every partition (its appends are fenced)."""
    client = Client(factory(), settings)
    worker = EngineWorker(factory(), settings)
    await worker.prepare()
    await worker.rebalance()
    assert worker.leases.owned == set(range(settings.partitions))
    await client.register(EARLY)
    return client, worker


def test_a_wait_whose_worker_died_before_its_catch_up_is_swept(cluster_backend: Any,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    factory, settings = cluster_backend

    async def scenario() -> None:
        client, worker = await one_worker(factory, settings)
        iid = await client.start("early", {"k": "v"})
        await drain_inboxes(worker)  # created; s scheduled
        # published after the instance was created, before its wait exists: only the index finds it
        await client.publish("early.event", {"k": "v", "result": "early"})
        events = await worker.redis.xrange(worker.keys.events)
        assert await worker.router.route([(worker.keys.events, e.decode(), f) for e, f in events]) == 0

        async def died(*_: Any) -> None:
            raise RuntimeError("the worker died before its catch-up")

        monkeypatch.setattr(worker.catchups, "_deliver_early_events", died)
        await client.send("step.completed", iid, {"step": "s", "attempt": 1, "output": {}})
        with pytest.raises(RuntimeError, match="died"):
            await drain_inboxes(worker)  # s completed, w waiting: registered, then the worker "dies"
        assert (await client.status(iid))["steps"]["w"]["status"] == "waiting"
        p = worker.keys.partition(iid)
        assert await worker.redis.zcard(worker.keys.catchups(p)) == 1
        monkeypatch.undo()

        assert await worker.sweep_catchups() == 0  # within the grace period: its own look may still come
        worker.clock = lambda: clock_ms() + CATCHUP_GRACE_MS + 1_000
        assert await worker.sweep_catchups() == 1
        assert worker.stats.catchups_swept == 1
        assert await worker.redis.zcard(worker.keys.catchups(p)) == 0
        assert await drain_inboxes(worker) == 1  # the early event, delivered to the wait
        state = await client.state(iid)
        assert state.status == "completed", state
        history = await client.history(iid)
        check_history(history)
        done = [e for e in history if e["type"] == "workflow.step_completed"]
        assert [e["data"]["step"] for e in done] == ["s", "w"] and done[1]["data"]["output"]["result"] == "early"
        await client.close()
        await worker.redis.aclose()

    run(scenario())


def test_an_own_catch_up_strikes_the_wait_off(cluster_backend: Any) -> None:
    """The usual path: the worker looks right after its append and confirms; nothing is left
    for a sweep."""
    factory, settings = cluster_backend

    async def scenario() -> None:
        client, worker = await one_worker(factory, settings)
        iid = await client.start("early", {"k": "x"})
        await drain_inboxes(worker)
        await client.send("step.completed", iid, {"step": "s", "attempt": 1, "output": {}})
        await drain_inboxes(worker)
        assert (await client.status(iid))["steps"]["w"]["status"] == "waiting"
        assert await worker.redis.zcard(worker.keys.catchups(worker.keys.partition(iid))) == 0
        await client.close()
        await worker.redis.aclose()

    run(scenario())
