"""The events routes over loopback HTTP against a running `foldflow api` (with a
real worker, projector and activity worker): seed 000's envelope, a repeated id
published once under concurrent publishers, filters, pages, 404s, 413, and the
seed-000 flow piece: `agent.task_completed` POSTed over HTTP completes the
event_wait step of a running agent-task-execution instance, and the correlation
lookup shows everything in order."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.client import Client
from engine.config import Settings
from engine.errors import UnknownInstance
from engine.store.connection import connect
from tests.support.api_stack import ApiStack
from tests.support.poll import eventually, run

EXAMPLE = Path(__file__).resolve().parents[3] / "engine/dev/examples/agent-task-execution.json"


def seed_event(**overrides: Any) -> dict[str, Any]:
    """Seed 000's event envelope, with a fresh id and correlation id so tests keep apart."""
    tag = uuid.uuid4().hex[:8]
    return {"id": f"evt-{tag}", "type": "agent.task_completed", "source": "agent-orchestrator",
            "timestamp": "2023-06-15T10:30:00Z", "correlation_id": f"corr-{tag}",
            "data": {"task_id": f"task-{tag}", "agent_id": "agent-456", "result": {"status": "success"}},
            **overrides}


@pytest.fixture
def http(api: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api, timeout=10) as c:
        yield c


@asynccontextmanager
async def engine_client(stack: ApiStack) -> AsyncIterator[Client]:
    client = Client(connect(stack.redis_url), Settings(redis_url=stack.redis_url, prefix=stack.prefix,
                                                       partitions=stack.partitions))
    try:
        yield client
    finally:
        await client.close()


def test_seed_envelope_published_and_served_verbatim(http: httpx.Client) -> None:
    event = seed_event()
    answer = http.post("/events", json=event)
    assert answer.status_code == 202
    accepted = answer.json()
    assert accepted["id"] == event["id"] and accepted["duplicate"] is False
    assert http.get(f"/events/{event['id']}").json() == {**event, "entry_id": accepted["entry_id"]}
    again = http.post("/events", json=event)
    assert again.status_code == 202 and again.json() == {**accepted, "duplicate": True}


def test_concurrent_posts_of_one_id_publish_once(api: str, http: httpx.Client) -> None:
    source = f"racer-{uuid.uuid4().hex[:8]}"
    events = [seed_event(source=source) for _ in range(10)]

    async def race() -> list[list[dict[str, Any]]]:
        async with httpx.AsyncClient(base_url=api, timeout=10) as a, httpx.AsyncClient(base_url=api, timeout=10) as b:
            pairs = []
            for event in events:
                answers = await asyncio.gather(a.post("/events", json=event), b.post("/events", json=event))
                assert [r.status_code for r in answers] == [202, 202]
                pairs.append([r.json() for r in answers])
            return pairs

    for pair in run(race()):
        assert sorted(r["duplicate"] for r in pair) == [False, True]
        assert pair[0]["entry_id"] == pair[1]["entry_id"]
    listed = http.get("/events", params={"source": source, "limit": 100}).json()
    assert sorted(e["id"] for e in listed["items"]) == sorted(e["id"] for e in events)


def test_filters_and_pages(http: httpx.Client) -> None:
    source = f"pager-{uuid.uuid4().hex[:8]}"
    ids = [http.post("/events", json={"type": "note.posted", "source": source, "data": {"n": n}}).json()["id"]
           for n in range(5)]
    http.post("/events", json={"type": "note.other", "source": source, "data": {}})
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"source": source, "type": "note.posted", "limit": 2}
        page = http.get("/events", params={**params, **({"cursor": cursor} if cursor else {})}).json()
        seen += [e["id"] for e in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1] and pages == 3
    assert http.get("/events", params={"source": source, "since": "1h"}).json()["items"][0]["type"] == "note.other"
    assert http.get("/events", params={"source": source, "until": "0"}).json()["items"] == []


def test_unknown_ids_are_404_and_bad_input_400(http: httpx.Client) -> None:
    for path in ("/events/evt-never-published", "/events/1-1", f"/correlations/corr-{uuid.uuid4().hex}/events"):
        answer = http.get(path)
        assert answer.status_code == 404 and answer.headers["content-type"].startswith("application/problem+json")
    assert http.post("/events", json={"type": "t", "id": "not an id"}).status_code == 400
    assert http.post("/events", json={"data": {}}).status_code == 400
    assert http.get("/events", params={"cursor": "nope"}).status_code == 400


def test_data_over_the_payload_limit_is_413_and_not_stored(http: httpx.Client) -> None:
    kind = f"big-{uuid.uuid4().hex[:8]}"
    answer = http.post("/events", json={"type": kind, "data": {"blob": "x" * (1 << 20)}})
    assert answer.status_code == 413 and answer.headers["content-type"].startswith("application/problem+json")
    assert http.get("/events", params={"type": kind}).json()["items"] == []


def test_an_event_posted_over_http_completes_the_wait_and_the_correlation_shows_it(
        stack: ApiStack, http: httpx.Client) -> None:
    tag = uuid.uuid4().hex[:8]
    context = {"project_id": "p-1", "task_id": f"t-{tag}", "agent_id": f"a-{tag}"}
    cid = f"corr-flow-{tag}"

    async def start_and_wait() -> str:
        async with engine_client(stack) as client:
            definition, _ = await client.register(EXAMPLE.read_bytes(), fmt="json")
            iid = await client.start(definition.name, context, correlation_id=cid)

            async def waiting() -> bool:
                steps = (await client.status(iid))["steps"]
                return bool(steps["execution_monitoring"]["status"] == "waiting")

            await eventually(waiting, what="the event_wait step waiting", timeout=30, retry_on=(UnknownInstance,))
            return iid

    iid = run(start_and_wait())
    event = seed_event(correlation_id=cid, data={"task_id": context["task_id"], "agent_id": context["agent_id"],
                                                 "result": {"status": "success"}})
    accepted = http.post("/events", json=event).json()

    async def finish() -> str:
        async with engine_client(stack) as client:
            return (await client.wait(iid, timeout=30)).status

    assert run(finish()) == "completed"

    def timeline() -> list[dict[str, Any]]:
        answer = http.get(f"/correlations/{cid}/events")
        return list(answer.json()["events"]) if answer.status_code == 200 else []

    events = run(eventually(timeline, what="the correlation timeline complete", timeout=30,
                            ok=lambda es: any(e["type"] == "workflow.completed" for e in es)
                            and any(e["id"] == event["id"] for e in es)))
    types = [e["type"] for e in events]
    external = types.index("agent.task_completed")
    assert events[external] == {**event, "entry_id": accepted["entry_id"]}
    waited = next(i for i, e in enumerate(events)
                  if e["type"] == "workflow.step_started" and e["data"].get("step") == "execution_monitoring")
    assert types[0] == "workflow.started" and waited < external < types.index("workflow.completed")
    started = events[0]
    assert started["correlation_id"] == cid and started["id"] == f"{iid}:{started['id'].rsplit(':', 1)[1]}"
    assert started["data"]["workflow_type"] == "Agent Task Execution" and started["data"]["context"] == context
    assert uuid.UUID(started["data"]["workflow_id"])
