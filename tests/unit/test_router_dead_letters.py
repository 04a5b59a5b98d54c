"""The router dead-letters through dead_letter.lua like every other worker: the
same seven fields, acknowledged in the same script call, only while the event is
still its own; and `foldflow dlq list|show|replay` read and replay those letters.
On Redis Cluster (simulated: fakeredis knows no slots) the same letter is made
in three commands, ff:events and ff:events:dlq having no common hash tag."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import fakeredis
import orjson
import pytest

import engine.ops.dlq_cli
import engine.store.events
from engine.config import Settings
from engine.ops.cli import main
from engine.ops.dlq import DeadLetters
from engine.store.events import Store
from engine.store.keys import ACTIVITY_GROUP, ROUTER_GROUP, Keys
from engine.workers.router import EventRouter
from tests.support.poll import run

SEVEN = {"reason", "source", "entry_id", "group", "ts", "deliveries", "fields"}
BAD = {"type": "agent.done", "data": "[1]"}  # data must be a JSON object


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def settings(prefix: str) -> Settings:
    return Settings(prefix=prefix, partitions=2, block_ms=20, claim_idle_ms=1_000)


@pytest.fixture(params=["single", "cluster"])
def topology(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "cluster":
        monkeypatch.setattr(engine.store.events, "is_cluster", lambda _redis: True)
    yield request.param


def text_fields(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


async def router_for(redis: Any, settings: Settings, consumer: str = "r-1") -> EventRouter:
    keys = Keys(settings.prefix, settings.partitions)
    store = Store(redis, keys)
    await store.load_scripts()
    router = EventRouter(redis, keys, store, consumer, settings)
    await router.prepare()
    return router


def test_the_routers_letter_has_the_shape_of_everyones(server: fakeredis.FakeServer, settings: Settings,
                                                        topology: str) -> None:
    async def scenario() -> None:
        r = fakeredis.FakeAsyncRedis(server=server)
        router = await router_for(r, settings)
        keys = router.keys
        ev_id = (await r.xadd(keys.events, BAD)).decode()
        await router.route(await router.reader.read(10, None))
        (letter_id, raw), = await r.xrange(keys.events_dlq)
        letter = text_fields(raw)
        assert set(letter) == SEVEN
        assert letter["reason"] == "data must be a JSON object, got list"
        assert (letter["source"], letter["entry_id"], letter["group"]) == (keys.events, ev_id, ROUTER_GROUP)
        assert letter["deliveries"] == "1" and int(letter["ts"]) > 1_600_000_000_000
        assert orjson.loads(letter["fields"]) == BAD
        assert (await r.xpending(keys.events, ROUTER_GROUP))["pending"] == 0  # acknowledged with it
        assert router.dead_lettered == 1

        # an activity worker's letter, through the same Store method: the same fields
        task_stream = keys.tasks(0, "billing")
        await router.store.ensure_group(task_stream, ACTIVITY_GROUP)
        task_id = (await r.xadd(task_stream, {"attempt": "one"})).decode()
        await r.xreadgroup(ACTIVITY_GROUP, "a-1", {task_stream: ">"})
        await router.store.dead_letter_many([(task_stream, keys.dlq(0), ACTIVITY_GROUP, task_id, "bad attempt",
                                              {b"attempt": b"one"}, 1)], "a-1", 1_700_000_000_000)
        (_, task_letter), = await r.xrange(keys.dlq(0))
        assert list(text_fields(task_letter)) == list(letter)  # same fields, same order
        await r.aclose()

    run(scenario())


def test_a_redelivered_event_counts_its_deliveries_and_one_not_ours_is_left(
        server: fakeredis.FakeServer, settings: Settings, topology: str) -> None:
    async def scenario() -> None:
        r = fakeredis.FakeAsyncRedis(server=server)
        first = await router_for(r, settings, "r-1")
        second = await router_for(r, settings, "r-2")
        keys = first.keys
        await r.xadd(keys.events, BAD)
        entries = await first.reader.read(10, None)
        # a second router reclaims it while the first is slow: the first's letter is not written
        reclaimed = [e for e, _ in await second.reader.reclaim(0)]
        await first.route(entries)
        assert await r.xlen(keys.events_dlq) == 0
        assert (await r.xpending(keys.events, ROUTER_GROUP))["pending"] == 1  # still the second's to handle
        await second.route(reclaimed)
        (_, raw), = await r.xrange(keys.events_dlq)
        assert text_fields(raw)["deliveries"] == "2"
        assert (await r.xpending(keys.events, ROUTER_GROUP))["pending"] == 0
        await r.aclose()

    run(scenario())


def test_foldflow_dlq_lists_shows_and_replays_the_routers_letters(
        server: fakeredis.FakeServer, settings: Settings, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(engine.ops.dlq_cli, "connect", lambda _url: fakeredis.FakeAsyncRedis(server=server))
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # never dialled: connect is the fake
    monkeypatch.setenv("FOLDFLOW_PREFIX", settings.prefix)
    monkeypatch.setenv("FOLDFLOW_PARTITIONS", str(settings.partitions))

    def dlq(*args: str) -> tuple[int, Any]:
        code = main(["dlq", *args])
        out = capsys.readouterr().out
        return code, json.loads(out) if out.startswith(("[", "{")) else out

    async def seed() -> tuple[str, Keys]:
        r = fakeredis.FakeAsyncRedis(server=server)
        router = await router_for(r, settings)
        ev_id = (await r.xadd(router.keys.events, BAD)).decode()
        await router.route(await router.reader.read(10, None))
        await r.aclose()
        return ev_id, router.keys

    ev_id, keys = run(seed())
    code, letters = dlq("list", "--partition", "events")
    assert code == 0 and len(letters) == 1
    letter = letters[0]
    assert letter["ref"].startswith("events/") and letter["entry_id"] == ev_id and letter["source"] == keys.events
    assert (letter["group"], letter["deliveries"]) == (ROUTER_GROUP, 1) and letter["ts"] is not None
    assert letter["fields"] == BAD and letter["replayable"]
    assert dlq("show", letter["ref"]) == (0, letter)
    code, table = dlq("list", "--table")
    assert code == 0 and letter["ref"] in table

    code, replayed = dlq("replay", letter["ref"])
    assert code == 0 and replayed["source"] == keys.events

    async def after() -> None:
        r = fakeredis.FakeAsyncRedis(server=server)
        (_, raw), = await r.xrange(keys.events, min=replayed["new_id"], max=replayed["new_id"])
        assert text_fields(raw) == BAD
        assert await r.xlen(keys.events_dlq) == 0
        await r.aclose()

    run(after())


def test_an_older_four_field_letter_is_still_read(server: fakeredis.FakeServer, settings: Settings) -> None:
    async def scenario() -> None:
        r = fakeredis.FakeAsyncRedis(server=server)
        keys = Keys(settings.prefix, settings.partitions)
        await r.xadd(keys.events_dlq, {"reason": "missing field 'type'", "source": keys.events, "entry_id": "1-0",
                                       "fields": orjson.dumps({"data": "{}"})})
        (letter,) = await DeadLetters(r, keys).find(partition="events")
        assert (letter.group, letter.ts, letter.deliveries) == (None, None, None)
        assert letter.fields == {"data": "{}"} and letter.replayable
        await r.aclose()

    run(scenario())
