"""The monitor on fakeredis: each change of a bridge run is published once, in
version order, however often its feed entries are delivered; a hole left by
another bridge is filled from the instance stream; other instances' entries are
only acknowledged; an unreadable entry is dead-lettered."""

from __future__ import annotations

import time

import fakeredis
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.bridge.monitor import Monitor
from engine.bridge.updates import updates
from engine.core.model import (
    Event,
    StepCompleted,
    StepError,
    StepFailed,
    StepScheduled,
    WorkflowCreated,
    WorkflowFailed,
    WorkflowStarted,
    encode,
)
from engine.runtime.consume import Entry
from engine.store.events import Store
from engine.store.keys import Keys
from engine.store.runs import BRIDGE_SOURCE, MONITOR_GROUP, RunStore
from projections.keys import ViewKeys
from projections.store import ViewStore
from tests.support.poll import run

EVENTS: list[Event] = [WorkflowCreated(instance_id="r-1", workflow="w", version="1"), WorkflowStarted(),
                       StepScheduled(step="a", attempt=1, task_id="t", queue="agent-a")]


class Rig:
    def __init__(self, prefix: str) -> None:
        self.redis = fakeredis.aioredis.FakeRedis(server=fakeredis.FakeServer())
        self.keys = Keys(prefix, 2)
        self.runs = RunStore(self.redis, self.keys)
        self.monitor = Monitor(self.runs, Store(self.redis, self.keys), ViewStore(self.redis, ViewKeys(self.keys)),
                               "c1", time.time)

    async def feed(self, iid: str, events: list[Event], *, bridge: bool = True) -> list[Entry]:
        """Append the events to the instance stream and feed, and read them in the monitor's group."""
        p = self.keys.partition(iid)
        await self.redis.xgroup_create(self.keys.feed(p), MONITOR_GROUP, id="0", mkstream=True)
        if bridge:
            await self.runs.create(iid, {"run_id": iid, "source": BRIDGE_SOURCE})
        for version, event in enumerate(events, 1):
            fields = {"type": "x", "version": version, "ts": 1_700_000_000_000 + version, "data": encode(event)}
            await self.redis.xadd(self.keys.instance(iid, p), fields)
            await self.redis.xadd(self.keys.feed(p), {**fields, "id": iid})
        reply = await self.redis.xreadgroup(MONITOR_GROUP, "c1", {self.keys.feed(p): ">"})
        return [(self.keys.feed(p), eid.decode(), f) for eid, f in reply[0][1]]

    async def published(self) -> list[dict[str, object]]:
        return [orjson.loads(f[b"data"]) for _i, f in await self.redis.xrange(self.runs.rk.monitoring)]

    async def pending(self, iid: str) -> int:
        info = await self.redis.xpending(self.keys.feed(self.keys.partition(iid)), MONITOR_GROUP)
        return int(info["pending"])


@pytest.fixture
def rig(prefix: str) -> Rig:
    return Rig(prefix)


def test_redelivered_entries_publish_nothing_twice(rig: Rig) -> None:
    async def go() -> None:
        entries = await rig.feed("r-1", EVENTS)
        await rig.monitor.handle(entries)
        await rig.monitor.handle(entries)  # a crash after the script call: the same batch again
        published = await rig.published()
        assert [(m["step_id"], m["status"]) for m in published] == [
            (None, "PENDING"), (None, "RUNNING"), ("a", "RUNNING")]
        assert await rig.pending("r-1") == 0
        record = await rig.runs.get("r-1")
        assert record is not None and (record["mv"], record["status"]) == ("3", "RUNNING")

    run(go())


def test_a_hole_is_filled_from_the_instance_stream(rig: Rig) -> None:
    async def go() -> None:
        entries = await rig.feed("r-1", EVENTS)
        await rig.monitor.handle(entries[2:])  # versions 1 and 2 are pending at another bridge
        assert [m["metadata"]["version"] for m in await rig.published()] == [1, 2, 3]  # type: ignore[index]
        assert rig.monitor.stats.monitor_filled == 2
        await rig.monitor.handle(entries[:2])  # the other bridge's entries, claimed later: only acknowledged
        assert len(await rig.published()) == 3 and await rig.pending("r-1") == 0

    run(go())


def test_other_instances_are_only_acknowledged(rig: Rig) -> None:
    async def go() -> None:
        entries = await rig.feed("x-1", EVENTS, bridge=False)
        await rig.monitor.handle(entries)
        assert await rig.published() == [] and await rig.pending("x-1") == 0

    run(go())


def test_an_unreadable_entry_is_dead_lettered(rig: Rig) -> None:
    async def go() -> None:
        good = await rig.feed("r-1", EVENTS[:1])
        feed = good[0][0]
        await rig.redis.xadd(feed, {"id": "r-1", "version": "x", "data": "{"})
        reply = await rig.redis.xreadgroup(MONITOR_GROUP, "c1", {feed: ">"})
        bad = [(feed, eid.decode(), f) for eid, f in reply[0][1]]
        await rig.monitor.handle(good + bad)
        letters = await rig.redis.xrange(rig.keys.dlq(rig.keys.partition("r-1")))
        assert len(letters) == 1 and b"bridge monitor cannot read" in letters[0][1][b"reason"]
        assert len(await rig.published()) == 1

    run(go())


PIPELINE: list[Event] = [*EVENTS, StepCompleted(step="a", attempt=1, output=1),
                         StepScheduled(step="b", attempt=1, task_id="t2", queue="agent-b"),
                         StepFailed(step="b", attempt=1, error=StepError(message="no", retryable=False)),
                         WorkflowFailed(step="b", error=StepError(message="no", retryable=False))]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(PIPELINE) - 1), st.integers(1, 3), st.booleans()), min_size=1,
                max_size=12))
def test_any_order_of_deliveries_to_two_bridges_publishes_each_change_once_in_order(
        deliveries: list[tuple[int, int, bool]]) -> None:
    """Batches of the feed, in any order, repeated, split between two bridges (one's pending
    entries reclaimed by the other): the stream holds the run's updates once each, in order."""

    async def go() -> None:
        rig = Rig("pt")
        other = Monitor(rig.runs, Store(rig.redis, rig.keys), ViewStore(rig.redis, ViewKeys(rig.keys)), "c2", time.time)
        entries = await rig.feed("r-1", PIPELINE)
        for start, size, second in deliveries:
            await (other if second else rig.monitor).handle(entries[start:start + size])
        await rig.monitor.handle(entries)  # what stayed pending is redelivered at last
        expected, _ = updates("r-1", "", [(v, 1_700_000_000_000 + v, e) for v, e in enumerate(PIPELINE, 1)])
        assert await rig.published() == [orjson.loads(orjson.dumps(m)) for m in expected]
        assert await rig.pending("r-1") == 0

    run(go())
