"""Admission slots on fakeredis: the scripts (idempotent acquire, queue order by priority
then arrival, release admitting the next, cancel_oldest, try), then the engine shell
deciding real inbox entries (limit 1 queue, cancel_newest, cancel_oldest, retry refused),
and the reconciler repairing what a crash leaves."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import fakeredis
import pytest

from engine.client import Client
from engine.config import Settings
from engine.store.admission import Slots
from engine.store.keys import ENGINE_GROUP, Keys
from engine.workers.admission import Reconciler
from engine.workers.engine import EngineWorker


def run(coro: Awaitable[None]) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


# -- the scripts -------------------------------------------------------------------------

async def _slots() -> Slots:
    return Slots(fakeredis.FakeAsyncRedis(), Keys("fft", 4))


def test_acquire_is_idempotent_per_instance() -> None:
    async def go() -> None:
        s = await _slots()
        first = await s.acquire("wf", "k", "a", limit=1, mode="queue", now=1)
        again = await s.acquire("wf", "k", "a", limit=1, mode="queue", now=2)
        assert (first.outcome, again.outcome) == ("run", "run")
        assert [i for i, _ in await s.holders("wf", "k")] == ["a"]
        assert (await s.acquire("wf", "k", "b", limit=1, mode="queue", now=3)).outcome == "queue"
        assert (await s.acquire("wf", "k", "b", limit=1, mode="queue", now=4)).outcome == "queue"
        assert await s.queued("wf", "k") == ["b"]
    run(go())


def test_the_queue_admits_highest_priority_first_then_in_arrival_order() -> None:
    async def go() -> None:
        s = await _slots()
        await s.acquire("wf", "k", "holder", limit=1, mode="queue", now=1)
        for iid, prio in (("low1", 0), ("high1", 9), ("mid", 5), ("high2", 9), ("low2", 0)):
            assert (await s.acquire("wf", "k", iid, limit=1, mode="queue", now=2, priority=prio)).outcome == "queue"
        order = []
        current = "holder"
        for _ in range(5):
            granted = await s.release("wf", "k", current, limit=1, now=3)
            assert len(granted) == 1
            current = granted[0]
            order.append(current)
        assert order == ["high1", "high2", "mid", "low1", "low2"]
        assert await s.release("wf", "k", current, limit=1, now=4) == []
        assert await s.holders("wf", "k") == [] and await s.queued("wf", "k") == []
    run(go())


def test_a_free_slot_with_a_queue_goes_to_the_queue_head_first() -> None:
    async def go() -> None:
        s = await _slots()
        await s.acquire("wf", "k", "h", limit=1, mode="queue", now=1)
        await s.acquire("wf", "k", "q1", limit=1, mode="queue", now=2)
        # a crash freed the slot without granting (as if release ran half way)
        await s.redis.zrem(s.keys.conc(s.keys.conc_digest("wf", "k"), "holders"), "h")
        got = await s.acquire("wf", "k", "late", limit=1, mode="queue", now=3)
        assert (got.outcome, got.granted) == ("queue", ["q1"])
    run(go())


def test_cancel_oldest_evicts_the_oldest_holder_once() -> None:
    async def go() -> None:
        s = await _slots()
        await s.acquire("wf", "k", "old", limit=2, mode="cancel_oldest", now=1)
        await s.acquire("wf", "k", "mid", limit=2, mode="cancel_oldest", now=2)
        got = await s.acquire("wf", "k", "new", limit=2, mode="cancel_oldest", now=3)
        assert (got.outcome, got.evicted) == ("run", "old")
        assert (await s.acquire("wf", "k", "new", limit=2, mode="cancel_oldest", now=4)).evicted == "old"  # a repeat
        assert sorted(i for i, _ in await s.holders("wf", "k")) == ["mid", "new"]
        assert (await s.acquire("wf", "k", "x", limit=2, mode="cancel_newest", now=5)).outcome == "full"
        assert (await s.acquire("wf", "k", "x", limit=2, mode="try", now=5)).outcome == "full"
    run(go())


def test_keys_are_apart_and_share_one_hash_tag_each() -> None:
    keys = Keys("ff", 8)
    d1, d2 = keys.conc_digest("wf", "a"), keys.conc_digest("wf", "b")
    assert d1 != d2 and keys.conc_digest("wf2", "a") != d1
    tags = {keys.conc(d1, p).split("}")[0] for p in ("holders", "queue", "seq", "evicted")}
    assert tags == {"{ff:conc:%s" % d1}


# -- the engine shell on fakeredis -----------------------------------------------------------

def _definition(on_limit: str, limit: int = 1) -> dict[str, Any]:
    return {"name": "conc", "version": "1", "definition": {
        "concurrency": {"key": "{{ input.user }}", "limit": limit, "on_limit": on_limit},
        "steps": [{"name": "a", "type": "service_call", "service": "svc"}]}}


class Rig:
    def __init__(self, client: Client, worker: EngineWorker) -> None:
        self.client, self.worker = client, worker
        self.slots = worker.batch.admission.slots

    async def pump(self) -> None:
        """Decide every inbox entry, including the ones deciding sends, until the inboxes are quiet."""
        keys = self.worker.keys
        while True:
            reply = await self.worker.redis.xreadgroup(ENGINE_GROUP, self.worker.consumer,
                                                       {keys.inbox(p): ">" for p in range(keys.partitions)}, count=100)
            entries = [(s.decode(), e.decode(), f) for s, rows in reply for e, f in rows]
            if not entries:
                return
            await self.worker.process(entries)

    async def status(self, iid: str) -> str:
        return (await self.client.state(iid)).status

    async def finish(self, iid: str, ok: bool = True) -> None:
        st = (await self.client.state(iid)).steps["a"]
        if ok:
            await self.client.send("step.completed", iid, {"step": "a", "attempt": st.attempt, "task_id": st.task_id})
        else:
            await self.client.send("step.failed", iid, {"step": "a", "attempt": st.attempt, "task_id": st.task_id,
                                                        "error": {"message": "boom", "retryable": False}})
        await self.pump()

    async def holders(self) -> list[str]:
        return [i for i, _ in await self.slots.holders("conc", "u1")]


def with_rig(prefix: str, on_limit: str, body: Callable[[Rig], Awaitable[None]], limit: int = 1) -> None:
    settings = Settings(prefix=prefix, partitions=4, block_ms=20, breaker_threshold=0)

    async def go() -> None:
        server = fakeredis.FakeServer()
        client = Client(fakeredis.FakeAsyncRedis(server=server), settings)
        worker = EngineWorker(fakeredis.FakeAsyncRedis(server=server), settings)
        await worker.prepare()
        await worker.rebalance()
        await client.register(_definition(on_limit, limit))
        try:
            await body(Rig(client, worker))
        finally:
            await client.close()
            await worker.redis.aclose()

    run(go())


def test_limit_one_queue_runs_the_second_after_the_first(prefix: str) -> None:
    async def body(r: Rig) -> None:
        for iid in ("a1", "a2", "a3"):  # one at a time: arrival is when the engine decides a start
            await r.client.start("conc", {"user": "u1"}, instance_id=iid)
            await r.pump()
        await r.client.start("conc", {"user": "u2"}, instance_id="other")
        await r.pump()
        assert [await r.status(i) for i in ("a1", "a2", "a3", "other")] == ["running", "queued", "queued", "running"]
        assert await r.holders() == ["a1"]
        await r.finish("a1")
        assert [await r.status(i) for i in ("a1", "a2", "a3")] == ["completed", "running", "queued"]
        await r.client.cancel("a3", "not needed")  # a queued one can be cancelled: it leaves the queue
        await r.pump()
        await r.finish("a2")
        assert await r.holders() == [] and await r.slots.queued("conc", "u1") == []
    with_rig(prefix, "queue", body)


def test_cancel_newest_cancels_the_new_start_naming_key_and_limit(prefix: str) -> None:
    async def body(r: Rig) -> None:
        await r.client.start("conc", {"user": "u1"}, instance_id="first")
        await r.pump()
        await r.client.start("conc", {"user": "u1"}, instance_id="second")
        await r.pump()
        second = await r.client.state("second")
        assert (await r.status("first"), second.status) == ("running", "cancelled")
        history = [e for _, e, _ in await r.worker.store.read_events("second")]
        reason = history[-1].reason  # type: ignore[union-attr]
        assert "limit 1 for key 'u1'" in reason and "cancel_newest" in reason
        assert await r.holders() == ["first"]
    with_rig(prefix, "cancel_newest", body)


def test_cancel_oldest_cancels_the_holder_naming_the_newer_one(prefix: str) -> None:
    async def body(r: Rig) -> None:
        await r.client.start("conc", {"user": "u1"}, instance_id="old")
        await r.pump()
        await r.client.start("conc", {"user": "u1"}, instance_id="new")
        await r.pump()
        assert (await r.status("old"), await r.status("new")) == ("cancelled", "running")
        history = [e for _, e, _ in await r.worker.store.read_events("old")]
        assert "newer instance new took its slot" in history[-1].reason  # type: ignore[union-attr]
        assert await r.holders() == ["new"]
    with_rig(prefix, "cancel_oldest", body)


def test_failed_frees_the_slot_and_a_retry_needs_one_again(prefix: str) -> None:
    async def body(r: Rig) -> None:
        await r.client.start("conc", {"user": "u1"}, instance_id="f")
        await r.pump()
        await r.finish("f", ok=False)
        assert await r.status("f") == "failed" and await r.holders() == []
        await r.client.start("conc", {"user": "u1"}, instance_id="g")
        await r.pump()
        await r.client.retry("f")  # the slot is g's: refused, with the reason in the history
        await r.pump()
        history = [e for _, e, _ in await r.worker.store.read_events("f")]
        assert type(history[-1]).__name__ == "CommandRejected" and "concurrency limit" in history[-1].reason  # type: ignore[union-attr]
        assert await r.status("f") == "failed"
        await r.finish("g")
        await r.client.retry("f", cmd_id="retry-2")  # a slot is free now: it runs again, holding it
        await r.pump()
        assert await r.status("f") == "running" and await r.holders() == ["f"]
    with_rig(prefix, "queue", body)


def test_the_reconciler_frees_leaked_slots_and_resends_lost_admits(prefix: str) -> None:
    async def body(r: Rig) -> None:
        for iid in ("h", "q"):
            await r.client.start("conc", {"user": "u1"}, instance_id=iid)
            await r.pump()
        # a crash between h's final append and its release: h completed, still holding
        st = (await r.client.state("h")).steps["a"]
        flush = r.worker.batch.admission.flush
        r.worker.batch.admission.flush = _noop  # type: ignore[method-assign]
        await r.client.send("step.completed", "h", {"step": "a", "attempt": st.attempt, "task_id": st.task_id})
        await r.pump()
        r.worker.batch.admission.flush = flush  # type: ignore[method-assign]
        r.worker.batch.admission._releases.clear()
        assert await r.status("h") == "completed" and await r.holders() == ["h"]
        # and a holder whose start never got appended (dead-lettered): absent
        await r.slots.acquire("conc", "u2", "ghost", limit=1, mode="queue", now=0)
        reconciler = Reconciler(r.worker.batch.admission, r.worker.store, grace_ms=0)
        await reconciler.once()
        await r.pump()
        assert await r.status("q") == "running" and await r.holders() == ["q"]
        assert await r.slots.holders("conc", "u2") == [] and reconciler.released == 2
        # a queued instance granted a slot whose admit was lost gets it again
        await r.client.start("conc", {"user": "u1"}, instance_id="q2")
        await r.pump()
        await r.slots.release("conc", "u1", "q", limit=1, now=0)  # grants q2, sends nothing
        assert await r.status("q2") == "queued" and await r.holders() == ["q2"]
        await reconciler.once()
        await r.pump()
        assert await r.status("q2") == "running" and reconciler.readmitted == 1
    with_rig(prefix, "queue", body)


async def _noop() -> None:
    return None


@pytest.mark.parametrize("on_limit", ["queue"])
def test_a_start_whose_key_cannot_be_rendered_is_dead_lettered_with_the_reason(prefix: str, on_limit: str) -> None:
    async def body(r: Rig) -> None:
        await r.client.start("conc", {"nouser": 1}, instance_id="nokey")
        await r.pump()
        assert await r.status("nokey") == "none"
        dlq = await r.worker.redis.xrange(r.worker.keys.dlq(r.worker.keys.partition("nokey")))
        assert any(b"cannot be rendered" in v for _, f in dlq for v in f.values())
    with_rig(prefix, on_limit, body)


def test_the_reconcilers_release_keeps_a_slot_retaken_since_it_looked() -> None:
    async def go() -> None:
        s = await _slots()
        await s.acquire("wf", "k", "a", limit=1, mode="queue", now=10)
        await s.acquire("wf", "k", "a", limit=1, mode="queue", now=50)  # a redelivered start re-took it
        assert await s.release("wf", "k", "a", limit=1, now=60, taken_by=10) == []
        assert [i for i, _ in await s.holders("wf", "k")] == ["a"]
        await s.release("wf", "k", "a", limit=1, now=60, taken_by=50)
        assert await s.holders("wf", "k") == []
    run(go())
