"""Live updates, in process: the envelope, SSE and WebSocket framing, resume
cursors (pure), the subscription's cap, pacing and cut-off (a scripted source),
and the sources over fakeredis."""

from __future__ import annotations

import asyncio
from typing import Any

import fakeredis
import orjson
import pytest
from litestar.testing import TestClient

from engine.api.app import create_app
from engine.api.live.cursor import decode_positions, encode_positions, entry_id, id_key, resume_from
from engine.api.live.envelope import context_of, envelope, matches
from engine.api.live.hub import Hub, OverCap, Subscription
from engine.api.live.sources import Contexts, ExecutionSource, FeedSource, stream_entries
from engine.api.live.sse import HEARTBEAT, Closed, Message, sse, ws_frame, ws_reason
from engine.api.settings import ApiSettings
from engine.api.workflow_ids import workflow_uuid
from engine.config import Settings
from engine.core.model import (
    Event,
    StepScheduled,
    StepSkipped,
    WorkflowCompleted,
    WorkflowCreated,
    WorkflowStarted,
    encode,
)
from engine.errors import InvalidInput, UnknownInstance
from engine.store.connection import connect_blocking
from engine.store.keys import Keys
from tests.support.poll import eventually

CREATED = WorkflowCreated(instance_id="i-1", workflow="Flow", version="1.0.0", context={"task_id": "t-1"},
                          correlation_id="c-1")
CTX = context_of(CREATED)
TS = 1733150000123


# -- envelope ---------------------------------------------------------------------------------
def test_lifecycle_events_keep_the_lifecycle_names_and_carry_the_seed_fields() -> None:
    event = StepScheduled(step="prepare", attempt=1, task_id="i-1:prepare:1", queue="planning", cmd="c")
    doc = envelope("ff", "i-1", CTX, 3, TS, event)
    assert doc == {
        "id": "i-1:3", "type": "workflow.step_started", "source": "foldflow/Flow",
        "timestamp": "2024-12-02T14:33:20.123Z", "correlation_id": "c-1",
        "data": {"step": "prepare", "attempt": 1, "task_id": "i-1:prepare:1", "queue": "planning", "kind": "task", "execution_id": "i-1", "workflow": "Flow", "workflow_version": "1.0.0",
                 "workflow_id": workflow_uuid("ff", "Flow"), "workflow_type": "Flow",
                 "context": {"task_id": "t-1"}},
    }


def test_every_other_event_gets_the_same_shape_under_its_engine_type() -> None:
    doc = envelope("ff", "i-1", CTX, 1, TS, CREATED)
    assert doc["type"] == "workflow.created" and doc["id"] == "i-1:1" and doc["correlation_id"] == "c-1"
    skipped = envelope("ff", "i-1", CTX, 4, TS, StepSkipped(step="s", attempt=0, reason="condition false"))
    assert skipped["type"] == "workflow.step_skipped" and skipped["data"]["reason"] == "condition false"
    assert "cmd" not in skipped["data"] and skipped["data"]["workflow_type"] == "Flow"


def test_an_envelope_without_the_first_event_leaves_its_context_null() -> None:
    doc = envelope("ff", "i-1", None, 9, TS, WorkflowCompleted(output={"ok": True}))
    assert doc["correlation_id"] is None and doc["data"]["workflow_id"] is None
    assert doc["data"]["output"] == {"ok": True}


def test_filters_of_the_events_stream() -> None:
    doc = envelope("ff", "i-1", CTX, 2, TS, WorkflowStarted())
    assert matches(doc, correlation_id="c-1", workflow="Flow", types=frozenset({"workflow.started"}))
    assert matches(doc, correlation_id=None, workflow=workflow_uuid("ff", "Flow"), types=frozenset())
    assert not matches(doc, correlation_id="c-2", workflow=None, types=frozenset())
    assert not matches(doc, correlation_id=None, workflow="Other", types=frozenset())
    assert not matches(doc, correlation_id=None, workflow=None, types=frozenset({"workflow.completed"}))


# -- cursors ----------------------------------------------------------------------------------
def test_entry_ids_are_checked_and_a_bare_millisecond_means_its_first_entry() -> None:
    assert entry_id(" 1733150000000-7 ") == "1733150000000-7"
    assert entry_id("1733150000000") == "1733150000000-0"
    for bad in ("", "yesterday", "1-2-3", "-1-0", "1-", "9" * 21 + "-0"):
        with pytest.raises(InvalidInput, match="stream entry id"):
            entry_id(bad)
    assert id_key("10-2") > id_key("9-99") and id_key("10-2") < id_key("10-10")


def test_a_feed_cursor_holds_one_position_per_partition() -> None:
    positions = ["1733150000000-0", "0-0", "1733150000123-4"]
    assert decode_positions(encode_positions(positions), 3) == positions
    with pytest.raises(InvalidInput, match="has 2 position"):
        decode_positions("1-0.2-0", 3)
    with pytest.raises(InvalidInput, match="stream entry id"):
        decode_positions("1-0.x.2-0", 3)


def test_last_event_id_wins_over_after() -> None:
    assert resume_from("5-0", "1-0") == "5-0"
    assert resume_from(None, "1-0") == "1-0"
    assert resume_from("  ", None) is None


# -- framing ----------------------------------------------------------------------------------
def test_sse_framing_of_a_message_a_close_and_a_heartbeat() -> None:
    message = Message("1733150000000-0", "workflow.started", {"id": "i-1:2", "type": "workflow.started"})
    assert sse(message).encode() == (b'id: 1733150000000-0\r\nevent: workflow.started\r\n'
                                     b'data: {"id":"i-1:2","type":"workflow.started"}\r\n\r\n')
    closed = sse(Closed("too slow", "too_slow")).encode()
    assert closed == b'event: close\r\ndata: {"reason":"too slow","kind":"too_slow"}\r\n\r\n'
    assert HEARTBEAT.encode() == b": heartbeat\r\n\r\n"


def test_websocket_frames_and_close_codes() -> None:
    assert ws_frame(Message("1-0", "workflow.completed", {"a": 1})) == \
        '{"id":"1-0","event":"workflow.completed","data":{"a":1}}'
    assert [Closed("x").ws_code, Closed("x", "too_slow").ws_code, Closed("x", "unavailable").ws_code] == \
        [1000, 1008, 1011]
    assert len(ws_reason("é" * 200).encode()) <= 123


# -- subscriptions ----------------------------------------------------------------------------
class Scripted:
    """A source that answers reads from a script of (messages, caught_up), then waits for `more`."""

    shared = False

    def __init__(self, script: list[tuple[int, bool]], close_after: bool = True) -> None:
        self.script, self.close_after = list(script), close_after
        self.closed: str | None = None
        self.sent = 0
        self.more = asyncio.Event()

    async def read(self) -> tuple[list[Message], bool]:
        if not self.script:
            await self.more.wait()
            self.more.clear()
            return [], True
        n, caught_up = self.script.pop(0)
        batch = [Message(f"{self.sent + i}-0", "e", {}) for i in range(n)]
        self.sent += n
        if not self.script and self.close_after:
            self.closed = "done"
        return batch, caught_up

    def cancel(self) -> None:
        pass


def hub(**settings: Any) -> Hub:
    return Hub(fakeredis.FakeAsyncRedis(), ApiSettings(**{"subscription_buffer": 4, **settings}))


async def collect(h: Hub, source: Scripted) -> list[Message | Closed | None]:
    subscription = h.admit().start(source)
    return [item async for item in subscription.items()]


def test_a_backlog_larger_than_the_buffer_is_paced_not_cut_off() -> None:
    items = asyncio.run(collect(hub(), Scripted([(4, False), (4, False), (3, True)])))
    assert [i.id for i in items if isinstance(i, Message)] == [f"{n}-0" for n in range(11)]
    assert items[-1] == Closed("done")


def test_a_client_that_falls_behind_live_events_is_cut_off() -> None:
    async def scenario() -> list[Message | Closed | None]:
        h = hub()
        subscription = h.admit().start(Scripted([(1, True), (3, True), (2, True)], close_after=False))
        items = subscription.items()
        first = await items.__anext__()  # the history taken: live from here
        for _ in range(10):  # the reader takes both live batches; the client reads nothing meanwhile
            await asyncio.sleep(0)
        rest = [item async for item in items]
        assert h.active == 0
        return [first, *rest]

    first, *rest = asyncio.run(scenario())
    assert isinstance(first, Message) and len(rest) == 1
    assert isinstance(rest[0], Closed) and rest[0].kind == "too_slow" and "more than 4 messages" in rest[0].reason


def test_the_cap_refuses_and_a_closed_subscription_gives_its_slot_back() -> None:
    async def scenario() -> None:
        h = hub(max_subscriptions=2)
        one, two = h.admit(), h.admit()
        with pytest.raises(OverCap, match="maximum of 2"):
            h.admit()
        await one.close()
        await one.close()  # twice: released once
        assert h.active == 1
        h.admit()
        await two.close()

    asyncio.run(scenario())


def test_an_idle_subscription_yields_heartbeats() -> None:
    async def scenario() -> list[Message | Closed | None]:
        source = Scripted([], close_after=False)
        subscription = hub(heartbeat_s=0.001).admit().start(source)
        items = subscription.items()
        first = await items.__anext__()
        await items.aclose()
        return [first]

    assert asyncio.run(scenario()) == [None]


# -- sources over fakeredis -------------------------------------------------------------------
async def append(redis: Any, keys: Keys, iid: str, events: list[Event]) -> list[str]:
    ids = []
    start = await redis.xlen(keys.instance(iid))
    for n, event in enumerate(events, start + 1):
        fields = {"type": "x", "version": n, "ts": TS + n, "data": encode(event)}
        ids.append((await redis.xadd(keys.instance(iid), fields)).decode())
        await redis.xadd(keys.feed(keys.partition(iid)), {**fields, "id": iid})
    return ids


def test_an_execution_source_sends_after_the_resume_id_and_closes_when_final() -> None:
    async def scenario() -> None:
        redis, keys = fakeredis.FakeAsyncRedis(), Keys("t", 4)
        with pytest.raises(UnknownInstance):
            await ExecutionSource(redis, redis, keys, "t", "i-1").open()
        with pytest.raises(InvalidInput, match="invalid execution id"):
            ExecutionSource(redis, redis, keys, "t", "../etc")
        ids = await append(redis, keys, "i-1", [CREATED, WorkflowStarted()])
        source = await ExecutionSource(redis, redis, keys, "t", "i-1", after=ids[0], chunk=8).open()
        messages, caught_up = await source.read()
        assert [m.id for m in messages] == ids[1:] and caught_up and source.closed is None
        assert messages[0].data["correlation_id"] == "c-1"  # the context comes from the skipped first event
        done = await append(redis, keys, "i-1", [WorkflowCompleted(output={})])
        messages, caught_up = await source.read()
        assert [m.event for m in messages] == ["workflow.completed"] and [m.id for m in messages] == done
        assert source.closed == "execution i-1 is completed: no more events"

    asyncio.run(scenario())


def test_a_feed_source_filters_and_its_ids_resume_every_partition() -> None:
    async def scenario() -> None:
        redis, keys = fakeredis.FakeAsyncRedis(), Keys("t", 4)
        other = WorkflowCreated(instance_id="j-2", workflow="Other", version="1", correlation_id="c-2")
        await append(redis, keys, "i-1", [CREATED])
        source = await FeedSource(redis, redis, keys, "t", Contexts(), positions=None,
                                  correlation_id="c-1").open()
        await append(redis, keys, "j-2", [other, WorkflowStarted()])
        await append(redis, keys, "i-1", [WorkflowStarted(), WorkflowCompleted()])
        messages, _ = await source.read()
        assert [m.event for m in messages] == ["workflow.started", "workflow.completed"]
        assert {m.data["data"]["execution_id"] for m in messages} == {"i-1"}
        again = await FeedSource(redis, redis, keys, "t", Contexts(), correlation_id="c-1",
                                 positions=decode_positions(messages[0].id, 4)).open()
        resumed, _ = await again.read()
        assert [m.id for m in resumed] == [messages[1].id]

    asyncio.run(scenario())


def test_watchers_of_one_execution_share_one_tail_and_all_get_every_event() -> None:
    async def scenario() -> None:
        redis, keys = fakeredis.FakeAsyncRedis(), Keys("t", 4)
        h = Hub(redis, ApiSettings(subscription_buffer=8))
        ids = await append(redis, keys, "i-1", [CREATED, WorkflowStarted()])

        async def watch() -> list[Message | Closed | None]:
            source = await ExecutionSource(redis, redis, keys, "t", "i-1").open()
            return [item async for item in h.admit().start(source).items() if item is not None]

        watchers = [asyncio.create_task(watch()) for _ in range(3)]
        await eventually(lambda: len(h.tails) == 1 and len(h.tails[keys.instance("i-1")].followers) == 3)
        ids += await append(redis, keys, "i-1", [WorkflowCompleted(output={})])
        for items in await asyncio.gather(*watchers):
            assert [i.id for i in items if isinstance(i, Message)] == ids
            assert items[-1] == Closed("execution i-1 is completed: no more events")
        assert h.tails == {} and h.active == 0

    asyncio.run(scenario())


def test_a_late_watcher_reads_the_gap_to_the_tail_before_it_joins() -> None:
    async def scenario() -> None:
        redis, keys = fakeredis.FakeAsyncRedis(), Keys("t", 4)
        h = Hub(redis, ApiSettings())
        ids = await append(redis, keys, "i-1", [CREATED])

        async def drain(subscription: Subscription) -> list[str]:
            return [i.id async for i in subscription.items() if isinstance(i, Message)]

        early = await ExecutionSource(redis, redis, keys, "t", "i-1").open()
        first = asyncio.create_task(drain(h.admit().start(early)))
        await eventually(lambda: len(h.tails) == 1)
        late = await ExecutionSource(redis, redis, keys, "t", "i-1").open()  # its first batch: [CREATED]
        ids += await append(redis, keys, "i-1", [WorkflowStarted()])
        await eventually(lambda: h.tails[keys.instance("i-1")].last == ids[-1])
        second = asyncio.create_task(drain(h.admit().start(late)))
        await eventually(lambda: len(h.tails[keys.instance("i-1")].followers) == 2)
        ids += await append(redis, keys, "i-1", [WorkflowCompleted()])
        assert await first == ids and await second == ids

    asyncio.run(scenario())


def test_a_follower_that_falls_behind_the_tail_is_cut_off_and_the_tail_ends_with_it() -> None:
    async def scenario() -> None:
        redis, keys = fakeredis.FakeAsyncRedis(), Keys("t", 4)
        h = Hub(redis, ApiSettings(subscription_buffer=2))
        await append(redis, keys, "i-1", [CREATED])
        items = h.admit().start(await ExecutionSource(redis, redis, keys, "t", "i-1").open()).items()
        assert isinstance(await items.__anext__(), Message)  # the history taken: live from here
        await eventually(lambda: len(h.tails) == 1)
        await append(redis, keys, "i-1", [WorkflowStarted(), StepSkipped(step="a", attempt=0, reason="r"),
                                          StepSkipped(step="b", attempt=0, reason="r")])
        await eventually(lambda: h.tails == {})  # its one follower left: nobody reads the stream any more
        rest = [i async for i in items if i is not None]
        assert len(rest) == 1 and isinstance(rest[0], Closed) and rest[0].kind == "too_slow"

    asyncio.run(scenario())


def test_xread_replies_of_both_protocols() -> None:
    entries = [(b"1-0", {b"a": b"1"})]
    assert stream_entries([[b"k", entries]]) == {"k": entries}
    assert stream_entries({b"k": [entries]}) == {"k": entries}
    assert stream_entries(None) == {}


# -- routes, in process -----------------------------------------------------------------------
def live_app(settings: Settings, api: ApiSettings) -> tuple[TestClient, fakeredis.FakeServer]:  # type: ignore[type-arg]
    server = fakeredis.FakeServer()
    app = create_app(settings, api, redis_factory=lambda: fakeredis.FakeAsyncRedis(server=server))
    app.state.live = Hub(fakeredis.FakeAsyncRedis(server=server), api)
    return TestClient(app), server


def test_the_stream_route_answers_the_history_with_follow_false(fake_settings: Settings) -> None:
    http, server = live_app(fake_settings, ApiSettings())
    keys = Keys(fake_settings.prefix, fake_settings.partitions)
    ids = asyncio.run(append(fakeredis.FakeAsyncRedis(server=server), keys, "i-1", [CREATED, WorkflowStarted()]))
    with http:
        response = http.get("/executions/i-1/stream?follow=false", headers={"Last-Event-ID": ids[0]})
        assert response.status_code == 200 and response.headers["cache-control"] == "no-cache"
        assert response.text == (f"id: {ids[1]}\r\nevent: workflow.started\r\ndata: "
                                 f"{orjson.dumps(envelope(fake_settings.prefix, 'i-1', CTX, 2, TS + 2, WorkflowStarted())).decode()}"
                                 "\r\n\r\n"
                                 'event: close\r\ndata: {"reason":"follow=false: every event so far was sent",'
                                 '"kind":"final"}\r\n\r\n')
        missing = http.get("/executions/nobody/stream")
        assert missing.status_code == 404 and missing.json()["detail"] == "no execution 'nobody'"
        assert http.get("/executions/i-1/stream?after=x").status_code == 400
        assert http.app.state.live.active == 0


def test_over_the_cap_the_stream_routes_answer_503_with_retry_after(fake_settings: Settings) -> None:
    http, _ = live_app(fake_settings, ApiSettings(max_subscriptions=1))
    with http:
        http.app.state.live.admit()  # the one slot, taken
        refused = http.get("/events/stream")
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.headers["content-type"] == "application/problem+json"
        assert http.get("/executions/i-1/stream").status_code == 503


def test_the_blocking_pool_is_its_own_and_its_read_timeout_outlasts_a_parked_read() -> None:
    client = connect_blocking("redis://127.0.0.1:1/0?socket_timeout=3", 7, read_timeout_s=15)
    pool = client.connection_pool
    assert pool.max_connections == 7 and type(pool).__name__ == "BlockingConnectionPool"
    assert pool.make_connection().socket_timeout == 15  # type: ignore[no-untyped-call]
