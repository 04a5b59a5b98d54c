"""Batch operations on fakeredis: matching pages through the read models from a
stored cursor, applying sends one command per item with the item's cmd_id, a
runner that dies mid-batch leaves it resumable with no item counted twice, the
rate bounds the items per (fake) second, and failures carry their reasons."""

from __future__ import annotations

from typing import Any

import fakeredis
import msgspec
import orjson
import pytest

from engine.api.batches import InvalidBatch, checked, decode_spec
from engine.config import Settings
from engine.core.batches import BatchQuery, BatchSpec, cmd_id, record_matches, refusal
from engine.core.model import Event, StepError, WorkflowCancelled, WorkflowCreated, WorkflowFailed, WorkflowStarted, encode
from engine.ops.batch_runner import BatchRunner, Pace
from engine.store.batches import BatchStore, Refused
from engine.store.keys import Keys
from projections.executions import new_record
from projections.keys import ViewKeys
from projections.listings import memberships
from tests.support.poll import run

T0 = 1_700_000_000_000


class FakeClock:
    def __init__(self) -> None:
        self.now = T0 / 1000

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


class Rig:
    def __init__(self, prefix: str, page: int = 7) -> None:
        self.redis = fakeredis.aioredis.FakeRedis(server=fakeredis.FakeServer())
        self.settings = Settings(prefix=prefix, partitions=3)
        self.keys = Keys(prefix, 3)
        self.vk = ViewKeys(self.keys)
        self.clock = FakeClock()
        self.store = BatchStore(self.redis, self.keys)
        self.page = page

    def runner(self) -> BatchRunner:
        return BatchRunner(self.redis, self.settings, clock=self.clock, sleep=self.clock.sleep, page=self.page)

    async def execution(self, iid: str, status: str, *, workflow: str = "w", created: int = 0,
                        error: str | None = None, correlation_id: str | None = None) -> None:
        """An instance stream and its executions read model, as the engine and projector leave them."""
        events: list[Event] = [WorkflowCreated(instance_id=iid, workflow=workflow, version="1",
                                               correlation_id=correlation_id), WorkflowStarted()]
        if status == "failed":
            events.append(WorkflowFailed(step="a", error=StepError(message=error or "boom")))
        elif status == "cancelled":
            events.append(WorkflowCancelled(reason="earlier"))
        p = self.keys.partition(iid)
        for version, event in enumerate(events, 1):
            await self.redis.xadd(self.keys.instance(iid, p), {"type": "x", "version": version, "ts": T0 + version,
                                                                "data": encode(event)})
        record = {**new_record(iid), "workflow": workflow, "workflow_version": "1", "status": status,
                  "created_ms": T0 - 10_000 + created, "correlation_id": correlation_id,
                  "error": {"step": "a", "message": error} if error else None}
        await self.redis.hset(self.vk.view(p, iid), "executions", orjson.dumps(record))
        for key, score in memberships(self.vk, p, record).items():
            await self.redis.zadd(key, {iid: score})
        if correlation_id:
            await self.redis.zadd(self.vk.correlation(p, correlation_id), {iid: record["created_ms"]})

    async def create(self, **spec: Any) -> str:
        batch = await self.store.create(checked(msgspec.convert(spec, BatchSpec), T0), T0)
        return batch.id

    async def commands(self) -> list[dict[str, Any]]:
        out = []
        for p in range(self.keys.partitions):
            entries: Any = await self.redis.xrange(self.keys.inbox(p))
            for _id, f in entries:
                out.append({"type": f[b"type"].decode(), "id": f[b"id"].decode(), "cmd_id": f[b"cmd_id"].decode(),
                            "data": orjson.loads(f[b"data"])})
        return out

    async def drive(self, bid: str, runner: BatchRunner | None = None) -> BatchRunner:
        runner = runner or self.runner()
        await self.store.load_scripts()
        assert await self.store.acquire(bid, runner.token, runner.ttl_ms, T0)
        await runner.advance(bid, float("inf"))
        return runner


def test_a_cancel_batch_matches_by_workflow_and_cancels_each_once(prefix: str) -> None:
    async def go() -> None:
        rig = Rig(prefix)
        for i in range(30):
            await rig.execution(f"e{i:02d}", "running", created=i)
        await rig.execution("other", "running", workflow="v")
        bid = await rig.create(operation="cancel", query={"workflow": "w"}, reason="cleanup")
        await rig.drive(bid)
        batch = await rig.store.found(bid)
        assert (batch.state, batch.matched, batch.done, batch.failed) == ("completed", 30, 30, 0)
        sent = await rig.commands()
        assert sorted(c["id"] for c in sent) == [f"e{i:02d}" for i in range(30)]
        assert {c["cmd_id"] for c in sent} == {cmd_id(bid, f"e{i:02d}") for i in range(30)}
        assert {c["type"] for c in sent} == {"cancel"} and sent[0]["data"] == {"reason": "cleanup"}
        assert await rig.store.active() == []

    run(go())


def test_items_that_refuse_the_command_are_failures_with_reasons(prefix: str) -> None:
    async def go() -> None:
        rig = Rig(prefix)
        await rig.execution("run-1", "running")
        await rig.execution("done-1", "cancelled")
        await rig.execution("fail-1", "failed", error="timeout talking to billing")
        bid = await rig.create(operation="pause", query={"status": ["running", "cancelled", "failed"]})
        await rig.drive(bid)
        batch = await rig.store.found(bid)
        assert (batch.matched, batch.done, batch.failed) == (3, 1, 2)
        reasons = {iid: reason for _e, iid, reason in await rig.store.failures(bid, None, 10)}
        assert reasons == {"done-1": "cancelled: cannot pause (accepted when running)",
                           "fail-1": "failed: cannot pause (accepted when running)"}
        assert [c["id"] for c in await rig.commands()] == ["run-1"]

    run(go())


def test_error_contains_and_correlation_filters(prefix: str) -> None:
    async def go() -> None:
        rig = Rig(prefix)
        await rig.execution("f1", "failed", error="Timeout talking to billing")
        await rig.execution("f2", "failed", error="bad input")
        await rig.execution("c1", "running", correlation_id="order-7")
        await rig.execution("c2", "running", correlation_id="order-8")
        retry = await rig.create(operation="retry", query={"status": ["failed"], "error_contains": "timeout"})
        signal = await rig.create(operation="signal", query={"correlation_id": "order-7"},
                                  signal={"name": "nudge", "payload": {"n": 1}})
        await rig.drive(retry)
        await rig.drive(signal)
        sent = {c["id"]: c for c in await rig.commands()}
        assert set(sent) == {"f1", "c1"}
        assert sent["f1"]["type"] == "retry" and sent["c1"]["data"] == {"name": "nudge", "payload": {"n": 1}}

    run(go())


def test_a_runner_killed_mid_batch_leaves_it_resumable_with_no_item_counted_twice(prefix: str) -> None:
    async def go() -> None:
        rig = Rig(prefix)
        ids = [f"e{i:02d}" for i in range(40)]
        for i, iid in enumerate(ids):
            await rig.execution(iid, "running", created=i)
        bid = await rig.create(operation="terminate", query={"status": ["running"]}, rate=10)
        first = rig.runner()
        sent = 0
        real_send = first.applier.client.send

        async def dying_send(*args: Any, **kwargs: Any) -> str:
            nonlocal sent
            sent += 1
            if sent > 25:  # the process dies mid-chunk: sent, never counted
                raise SystemExit("killed")
            return await real_send(*args, **kwargs)

        first.applier.client.send = dying_send  # type: ignore[method-assign]
        with pytest.raises(SystemExit):
            await rig.drive(bid, first)
        mid = await rig.store.found(bid)
        assert mid.state == "running" and mid.matched == 40 and mid.cursor < 26
        # One item the dead runner sent was applied by the engine before the next runner looks.
        applied = ids[mid.cursor]
        p = rig.keys.partition(applied)
        await rig.redis.xadd(rig.keys.instance(applied, p), {"type": "x", "version": 3, "ts": T0 + 3, "data": encode(
            WorkflowCancelled(reason="terminated", cmd=cmd_id(bid, applied)))})
        second = rig.runner()
        with pytest.raises(Refused):  # the dead one's lease still holds
            await rig.store.commit_apply(bid, second.token, 1000, T0, mid.cursor, mid.cursor, 0, [])
        await rig.redis.delete(rig.keys.batch(bid, "lease"))  # its TTL ran out
        await rig.drive(bid, second)
        batch = await rig.store.found(bid)
        assert (batch.state, batch.matched, batch.done + batch.failed, batch.failed) == ("completed", 40, 40, 0)
        commands = await rig.commands()
        assert {c["id"] for c in commands} == set(ids)
        assert all(c["cmd_id"] == cmd_id(bid, c["id"]) for c in commands)  # a resend is a no-op in the engine
        assert applied not in {c["id"] for c in commands[-(40 - mid.cursor):]}  # seen applied: not sent again
        assert commands[0]["data"] == {"reason": f"terminated by batch {bid}"}

    run(go())


def test_a_crash_while_matching_resumes_from_the_stored_cursor_without_duplicates(prefix: str) -> None:
    async def go() -> None:
        rig = Rig(prefix, page=4)
        for i in range(18):
            await rig.execution(f"e{i:02d}", "running" if i % 2 else "paused", created=i)
        bid = await rig.create(operation="cancel", query={"status": ["running", "paused"]})
        runner = rig.runner()
        await rig.store.load_scripts()
        assert await rig.store.acquire(bid, runner.token, runner.ttl_ms, T0)
        for _ in range(3):
            await runner._match(await rig.store.found(bid))
        stale = await rig.store.found(bid)
        await runner._match(stale)
        with pytest.raises(Refused, match="cursor"):  # a repeat of a page already stored changes nothing
            await rig.store.commit_match(bid, runner.token, 1000, T0, stale.match_cursor, "x", False, ["e00"])
        await runner.advance(bid, float("inf"))
        batch = await rig.store.found(bid)
        assert (batch.matched, batch.done) == (18, 18)
        assert sorted(await rig.store.items(bid, 0, 100)) == [f"e{i:02d}" for i in range(18)]

    run(go())


def test_the_rate_bounds_items_per_second(prefix: str) -> None:
    async def go() -> None:
        rig = Rig(prefix, page=500)
        for i in range(200):
            await rig.execution(f"e{i:03d}", "running", created=i)
        bid = await rig.create(operation="cancel", query={"status": ["running"]}, rate=50)
        start = rig.clock()
        runner = await rig.drive(bid)
        batch = await rig.store.found(bid)
        assert batch.done == 200
        chunk = runner._chunk(50)
        assert rig.clock() - start >= (200 - chunk) / 50  # the last chunk needs no wait after it

    run(go())


def test_pace_never_lets_more_than_rate_times_elapsed_plus_a_chunk_through() -> None:
    async def go() -> None:
        clock = FakeClock()
        pace = Pace(100, clock, clock.sleep)
        start, total = clock(), 0
        for n in (30, 30, 30, 30, 30, 30):
            total += n
            await pace.spend(n)
            assert total <= 100 * (clock() - start) + 30

    run(go())


def test_a_cancelled_batch_stops_and_keeps_what_it_did(prefix: str) -> None:
    async def go() -> None:
        rig = Rig(prefix)
        for i in range(5):
            await rig.execution(f"e{i}", "running")
        bid = await rig.create(operation="cancel", query={"workflow": "w"})
        await rig.store.load_scripts()
        assert await rig.store.cancel(bid, T0 + 1) == (True, "cancelled")
        assert await rig.store.cancel(bid, T0 + 2) == (False, "cancelled")
        await rig.drive(bid)
        batch = await rig.store.found(bid)
        assert (batch.state, batch.done, batch.finished_ms) == ("cancelled", 0, T0 + 1)
        assert await rig.commands() == [] and await rig.store.active() == []

    run(go())


def test_an_empty_match_completes_at_once(prefix: str) -> None:
    async def go() -> None:
        rig = Rig(prefix)
        bid = await rig.create(operation="resume", query={"workflow": "nothing-here"})
        await rig.drive(bid)
        batch = await rig.store.found(bid)
        assert (batch.state, batch.matched) == ("completed", 0)

    run(go())


def test_specs_are_checked_naming_the_field() -> None:
    with pytest.raises(InvalidBatch) as caught:
        checked(decode_spec({"operation": "signal", "reason": "x", "query": {"started_after": "yesterday"}}), T0)
    fields = [p for p, _ in caught.value.problems]
    assert fields == ["signal", "reason", "query.started_after"]
    with pytest.raises(InvalidBatch, match="at least one filter"):
        checked(decode_spec({"operation": "cancel"}), T0)
    with pytest.raises(InvalidBatch, match="rate"):
        decode_spec({"operation": "cancel", "rate": 0})
    with pytest.raises(InvalidBatch, match="operation"):
        decode_spec({"operation": "explode"})
    spec = checked(decode_spec({"operation": "cancel", "query": {"started_after": "1h"}}), T0)  # an age: from now
    assert spec.query.started_after == T0 - 3_600_000


def test_record_filters_and_refusals() -> None:
    record = {"workflow": "w", "workflow_version": "2", "status": "failed", "created_ms": 5,
              "error": {"step": "a", "message": "Connection REFUSED"}, "last_error": None}
    assert record_matches(record, BatchQuery(error_contains="refused", version="2", workflow="w"))
    assert not record_matches(record, BatchQuery(version="1", workflow="w"))
    assert not record_matches(record, BatchQuery(started_after=6))
    assert refusal("retry", "failed") is None
    assert refusal("resume", "running") == "running: cannot resume (accepted when paused)"


def test_batches_page_newest_first_and_failures_page_by_entry_id(prefix: str) -> None:
    async def go() -> None:
        rig = Rig(prefix)
        spec = checked(decode_spec({"operation": "cancel", "query": {"workflow": "w"}}), T0)
        made = [(await rig.store.create(spec, T0 + i)).id for i in range(5)]
        seen: list[str] = []
        cursor = None
        while True:
            page, cursor = await rig.store.page(2, cursor)
            seen += [b.id for b in page]
            if cursor is None:
                break
        assert seen == made[::-1]
        for i in range(3):
            await rig.execution(f"c{i}", "cancelled")
        bid = await rig.create(operation="pause", query={"status": ["cancelled"]})
        await rig.drive(bid)
        first = await rig.store.failures(bid, None, 2)
        rest = await rig.store.failures(bid, first[-1][0], 2)
        assert sorted(iid for _e, iid, _r in first + rest) == ["c0", "c1", "c2"] and len(rest) == 1

    run(go())


def test_the_chunk_in_flight_when_a_batch_is_cancelled_is_counted_and_nothing_after_it(prefix: str) -> None:
    async def go() -> None:
        rig = Rig(prefix)
        for i in range(30):
            await rig.execution(f"e{i:02d}", "running", created=i)
        bid = await rig.create(operation="cancel", query={"workflow": "w"}, rate=3)  # chunks of 5 (lease 5 s)
        runner = rig.runner()
        real_apply = runner.applier.apply

        async def cancel_midway(batch: Any, iid: str) -> str | None:
            if iid == "e22":  # the 8th matched (newest first): inside the second chunk
                assert await rig.store.cancel(bid, T0) == (True, "cancelled")
            return await real_apply(batch, iid)

        runner.applier.apply = cancel_midway  # type: ignore[method-assign]
        await rig.drive(bid, runner)
        batch = await rig.store.found(bid)
        sent = await rig.commands()
        assert (batch.state, batch.done, batch.cursor, len(sent)) == ("cancelled", 10, 10, 10)
        assert await rig.store.active() == []

    run(go())
