"""The events routes in process over fakeredis: seed 000's envelope in and out, a
repeated id published once, filters, cursor pages, 404s, 400s and 413; and that
entries with the envelope's extra fields read the same to the router and the
correlation projection."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import fakeredis
import orjson
import pytest
from litestar.testing import TestClient

from engine.api.models.events import lifecycle_envelope
from engine.api.routes import events as routes
from engine.client import Client
from engine.config import Settings
from engine.store.keys import Keys
from engine.store.published import before, envelope, is_entry_id
from engine.workers.router import decode_event_fields
from projections.correlation import external_event
from tests.support.poll import run
from tests.unit.api.conftest import app_client

# Seed 000's event envelope, verbatim.
SEED_EVENT: dict[str, Any] = {
    "id": "evt-123456",
    "type": "agent.task_completed",
    "source": "agent-orchestrator",
    "timestamp": "2023-06-15T10:30:00Z",
    "correlation_id": "corr-123456",
    "data": {"task_id": "task-123", "agent_id": "agent-456", "result": {"status": "success", "output": "done"}},
}

Http = TestClient[Any]


def entries(client: Http, settings: Settings) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """The events stream as Redis holds it (through the app's own connection)."""
    redis = client.app.state.services.redis
    found: list[tuple[bytes, dict[bytes, bytes]]] = client.blocking_portal.call(redis.xrange, Keys(settings.prefix).events)
    return found


def publish(client: Http, **body: Any) -> dict[str, Any]:
    answer = client.post("/events", json=body)
    assert answer.status_code == 202, answer.text
    doc: dict[str, Any] = answer.json()
    return doc


def test_seed_envelope_in_and_out(client: Http, fake_settings: Settings) -> None:
    accepted = publish(client, **SEED_EVENT)
    assert accepted["id"] == "evt-123456" and accepted["duplicate"] is False and is_entry_id(accepted["entry_id"])
    (entry_id, fields), = entries(client, fake_settings)
    assert entry_id.decode() == accepted["entry_id"]
    assert {k.decode(): v.decode() for k, v in fields.items() if k != b"data"} == {
        "type": "agent.task_completed", "id": "evt-123456", "source": "agent-orchestrator",
        "timestamp": "2023-06-15T10:30:00Z", "correlation_id": "corr-123456"}
    served = client.get("/events/evt-123456").json()
    assert served == {**SEED_EVENT, "entry_id": accepted["entry_id"]}
    assert client.get(f"/events/{accepted['entry_id']}").json() == served


def test_a_repeated_id_is_published_once(client: Http, fake_settings: Settings) -> None:
    first = publish(client, **SEED_EVENT)
    again = publish(client, **{**SEED_EVENT, "data": {"task_id": "other"}})
    assert again == {**first, "duplicate": True}
    assert len(entries(client, fake_settings)) == 1
    assert client.get("/events/evt-123456").json()["data"] == SEED_EVENT["data"]


def test_concurrent_publishers_of_one_id_add_one_entry(fake_settings: Settings) -> None:
    async def go() -> tuple[list[Any], int]:
        redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
        clients = [Client(redis, fake_settings) for _ in range(8)]
        results = await asyncio.gather(*(c.publish_event("t.x", {"n": i}, event_id="same") for i, c in enumerate(clients)))
        return list(results), await redis.xlen(clients[0].keys.events)

    results, length = run(go())
    assert length == 1
    assert sum(not r.duplicate for r in results) == 1 and len({r.entry_id for r in results}) == 1


def test_the_record_is_kept_as_long_as_events_are_and_then_the_id_is_free(fake_settings: Settings) -> None:
    async def go() -> tuple[int, bool, bool]:
        redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
        client = Client(redis, fake_settings)
        await client.publish("t.x", {}, event_id="e-1")
        ttl = await redis.pttl(client.keys.published("e-1"))
        await redis.delete(client.keys.published("e-1"))  # as if FOLDFLOW_EVENT_RETENTION_MS had passed
        later = await client.publish_event("t.x", {}, event_id="e-1")
        return ttl, later.duplicate, await redis.xlen(client.keys.events) == 2

    ttl, duplicate, two = run(go())
    assert 0 < ttl <= fake_settings.event_retention_ms
    assert duplicate is False and two


def test_an_event_without_an_id_is_known_by_its_entry_id(client: Http) -> None:
    accepted = publish(client, type="note.posted", data={"x": 1})
    assert accepted["id"] == accepted["entry_id"]
    served = client.get(f"/events/{accepted['id']}").json()
    assert served["source"] == client.app.state.services.client.keys.events
    assert served["timestamp"].endswith("Z") and served["correlation_id"] is None and served["data"] == {"x": 1}


def test_filters(client: Http) -> None:
    publish(client, type="a.one", source="svc-1", correlation_id="c-1", data={})
    publish(client, type="a.two", source="svc-1", data={})
    publish(client, type="a.one", source="svc-2", correlation_id="c-2", data={})

    def ids(**params: Any) -> list[tuple[str, str | None, str]]:
        items = client.get("/events", params=params).json()["items"]
        return [(e["type"], e["correlation_id"], e["source"]) for e in items]

    assert ids(type="a.one") == [("a.one", "c-2", "svc-2"), ("a.one", "c-1", "svc-1")]
    assert ids(source="svc-1") == [("a.two", None, "svc-1"), ("a.one", "c-1", "svc-1")]
    assert ids(correlation_id="c-1") == [("a.one", "c-1", "svc-1")]
    assert ids(type="a.one", source="svc-1") == [("a.one", "c-1", "svc-1")]
    assert ids(type="none") == []
    assert len(ids(since="1h")) == 3 and ids(until="0") == [] and len(ids(since="2000-01-01T00:00:00Z", until="2100-01-01T00:00:00Z")) == 3


def test_pages_newest_first_with_nothing_lost_or_repeated(client: Http) -> None:
    published = [publish(client, type="p.n", data={"n": i})["id"] for i in range(7)]
    seen, cursor, pages = [], None, 0
    while True:
        page = client.get("/events", params={"limit": 3, **({"cursor": cursor} if cursor else {})}).json()
        seen += [e["id"] for e in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == published[::-1] and pages == 3


def test_a_rare_filter_pages_on_within_the_scan_budget(client: Http, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(routes, "CHUNK", 2)
    monkeypatch.setattr(routes, "SCAN_BUDGET", 4)
    wanted = publish(client, type="rare", data={})["id"]
    for _ in range(6):
        publish(client, type="common", data={})
    first = client.get("/events", params={"type": "rare"}).json()
    assert first["items"] == [] and first["next_cursor"] is not None  # four read, none matched
    second = client.get("/events", params={"type": "rare", "cursor": first["next_cursor"]}).json()
    assert [e["id"] for e in second["items"]] == [wanted] and second["next_cursor"] is None


def test_unknown_and_trimmed_events_are_404(client: Http) -> None:
    accepted = publish(client, **SEED_EVENT)
    assert client.get("/events/evt-never").status_code == 404
    assert client.get("/events/1-1").status_code == 404
    redis = client.app.state.services.redis
    client.blocking_portal.call(redis.xtrim, client.app.state.services.client.keys.events, 0)
    answer = client.get("/events/evt-123456")
    assert answer.status_code == 404 and "trimmed" in answer.json()["detail"]
    assert accepted["entry_id"] in answer.json()["detail"]
    missing = client.get("/correlations/corr-nobody/events")
    assert missing.status_code == 404 and missing.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize(("body", "says"), [
    ({"data": {}}, "type"),
    ({"type": ""}, "type"),
    ({"type": "x" * 201}, "type"),
    ({"type": "t", "correlation_id": "c" * 201}, "correlation_id"),
    ({"type": "t", "source": "s" * 201}, "source"),
    ({"type": "t", "id": "has space"}, "id"),
    ({"type": "t", "id": "a/b"}, "id"),
    ({"type": "t", "timestamp": "yesterday"}, "timestamp"),
    ({"type": "t", "data": [1, 2]}, "data"),
    ({"type": "t", "data": {"n": 2**70}}, "JSON"),
    ({"type": "t", "colour": "red"}, "colour"),
])
def test_bad_input_is_400_and_stores_nothing(client: Http, fake_settings: Settings, body: dict[str, Any],
                                             says: str) -> None:
    answer = client.post("/events", json=body)
    assert answer.status_code == 400, answer.text
    assert says in answer.text
    assert entries(client, fake_settings) == []


@pytest.mark.parametrize("params", [{"cursor": "zz"}, {"cursor": "1-99999999999999999999"}, {"since": "soon"},
                                    {"limit": 0}, {"limit": 1001}])
def test_bad_listing_parameters_are_400(client: Http, params: dict[str, Any]) -> None:
    assert client.get("/events", params=params).status_code == 400


def test_bad_ids_are_400(client: Http) -> None:
    assert client.get("/events/not%20an%20id").status_code == 400
    assert client.get("/correlations/" + "c" * 201 + "/events").status_code == 400


@pytest.fixture
def small(fake_settings: Settings) -> Iterator[Http]:
    with app_client(Settings(**{**_fields(fake_settings), "max_payload_bytes": 2000})) as c:
        yield c


def _fields(settings: Settings) -> dict[str, Any]:
    return {f: getattr(settings, f) for f in settings.__struct_fields__}


def test_data_over_the_payload_limit_is_413(small: Http, fake_settings: Settings) -> None:
    answer = small.post("/events", json={"type": "big", "data": {"blob": "x" * 3000}})
    assert answer.status_code == 413 and answer.headers["content-type"].startswith("application/problem+json")
    assert entries(small, fake_settings) == []
    assert small.post("/events", json={"type": "fits", "data": {"blob": "x" * 100}}).status_code == 202


def test_envelope_fields_leave_the_router_and_the_projection_reading_the_same() -> None:
    fields = {b"type": b"agent.task_completed", b"data": orjson.dumps(SEED_EVENT["data"]),
              b"correlation_id": b"corr-123456", b"id": b"evt-123456", b"source": b"agent-orchestrator",
              b"timestamp": b"2023-06-15T10:30:00Z"}
    bare = {k: v for k, v in fields.items() if k in (b"type", b"data", b"correlation_id")}
    assert decode_event_fields(fields, 1 << 20) == decode_event_fields(bare, 1 << 20)
    indexed = external_event("1700000000000-0", fields, "ff:events")
    assert indexed is not None
    cid, score, member = indexed
    assert (cid, score) == ("corr-123456", 1700000000000)
    assert orjson.loads(member) == {**SEED_EVENT, "entry_id": "1700000000000-0"}
    old = external_event("1700000000000-0", bare, "ff:events")
    assert old is not None and orjson.loads(old[2])["id"] == "1700000000000-0"
    assert envelope("1700000000000-0", bare, "ff:events")["timestamp"] == "2023-11-14T22:13:20.000Z"


def test_entry_id_bounds() -> None:
    assert before("5-3") == "5-2" and before("5-0") == "4-18446744073709551615" and before("0-0") is None
    assert is_entry_id("1-0") and not is_entry_id("18446744073709551616-0") and not is_entry_id("1-")


def test_lifecycle_events_in_the_seed_envelope() -> None:
    event: dict[str, Any] = {"id": "x-1:2", "type": "workflow.started", "source": "foldflow/Flow", "timestamp": "t",
             "correlation_id": "c", "data": {"execution_id": "x-1", "workflow": "Flow", "workflow_version": "1"}}
    shown = lifecycle_envelope(event, "uuid-of-flow", {"task_id": "t-1"})
    assert shown["data"] == {**event["data"], "workflow_id": "uuid-of-flow", "workflow_type": "Flow",
                             "context": {"task_id": "t-1"}}
    step = lifecycle_envelope({**event, "type": "workflow.step_started"}, "uuid-of-flow", {"task_id": "t-1"})
    assert "context" not in step["data"] and step["data"]["workflow_type"] == "Flow"


def test_an_id_shaped_like_an_entry_id_is_found_as_the_publisher_named_it(client: Http) -> None:
    other = publish(client, type="first", data={})
    mine = publish(client, type="second", id=other["entry_id"], data={})
    assert mine["entry_id"] != other["entry_id"]
    assert client.get(f"/events/{other['entry_id']}").json()["type"] == "second"  # the record before the entry


def test_timestamps_keep_their_offset_and_empty_filters_are_absent(client: Http) -> None:
    publish(client, type="tz", timestamp="2023-06-15T12:30:00+02:00", data={})
    page = client.get("/events", params={"since": "", "until": "", "type": "tz"}).json()
    assert [e["timestamp"] for e in page["items"]] == ["2023-06-15T12:30:00+02:00"]


def test_the_id_record_shares_the_slot_of_the_events_stream() -> None:
    from redis.crc import key_slot

    keys = Keys("ff", 8)
    assert key_slot(keys.published("evt-1").encode()) == key_slot(keys.events.encode())
