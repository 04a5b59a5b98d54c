"""The service registry through a running `foldflow api` on a real Redis, its
health checks made over real HTTP to aiohttp services these tests start on
loopback ports (healthy, failing, stalling) and to a port nobody listens on."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis

from engine.dev.embedded import free_port
from tests.support.api_stack import ApiStack
from tests.support.http_services import FakeService, Seen, ServiceFarm


@pytest.fixture(scope="module")
def upstreams() -> Iterator[FakeService]:
    """aiohttp services on loopback: /ok answers 200, /fail 503, /slow after 3 s."""
    async def slow(seen: Seen) -> tuple[int, str]:
        await asyncio.sleep(3)
        return 200, "/slow here"

    with ServiceFarm() as farm:
        running = farm.add("upstreams")
        running.route("GET", "/ok", lambda seen: (200, "/ok here"))
        running.route("GET", "/fail", lambda seen: (503, "/fail here"))
        running.route("GET", "/slow", slow)
        yield running


def name() -> str:
    return f"svc-{uuid.uuid4().hex[:8]}"


def test_register_read_check_update_remove(stack: ApiStack, upstreams: FakeService) -> None:
    api, svc = stack.url, name()
    closed = f"http://127.0.0.1:{free_port()}"
    made = httpx.post(api + "/services", json={
        "name": svc, "instances": [upstreams.url, {"url": closed, "weight": 2}],
        "health": {"path": "/ok", "interval": "30s", "timeout": "1s", "failures_before_critical": 1},
        "timeout": "5s", "headers": {"Authorization": "Bearer {{ secrets.SVC_TOKEN }}"}, "tags": ["e2e"]})
    assert made.status_code == 201, made.text
    record = made.json()
    assert made.headers["location"] == f"/services/{record['id']}"
    assert record["timeout_ms"] == 5000 and record["health"]["interval_ms"] == 30_000
    assert record["headers"] == {"Authorization": "Bearer {{ secrets.SVC_TOKEN }}"}
    assert httpx.get(f"{api}/services/{svc}").json()["id"] == record["id"]

    checked = httpx.get(f"{api}/services/{svc}/health")
    assert checked.status_code == 200, checked.text
    body = checked.json()
    assert body["status"] == "warning"
    ok, down = body["checks"]
    assert (ok["url"], ok["status"], ok["output"]) == (upstreams.url, "passing", "HTTP 200: /ok here")
    assert down["url"] == closed and down["status"] == "critical" and down["checked_at"]
    shown = httpx.get(f"{api}/services/{record['id']}").json()
    assert [i["status"] for i in shown["instances"]] == ["passing", "critical"]

    # The checks are in Redis, where the executor reads them.
    r = redis.Redis.from_url(stack.redis_url)
    assert set(r.hkeys("{%s:svc}:checks:%s" % (stack.prefix, record["id"]))) == {upstreams.url.encode(),
                                                                                 closed.encode()}
    version = int(r.get("{%s:svc}:version" % stack.prefix) or 0)

    put = httpx.put(f"{api}/services/{svc}", json={"name": svc + "-v2", "instances": [upstreams.url],
                                                    "health": {"path": "/fail", "failures_before_critical": 1}})
    assert put.status_code == 200, put.text
    assert put.json()["id"] == record["id"] and put.json()["instances"][0]["status"] == "passing"
    assert int(r.get("{%s:svc}:version" % stack.prefix) or 0) == version + 1
    failing = httpx.get(f"{api}/services/{svc}-v2/health").json()
    assert failing["status"] == "critical" and failing["checks"][0]["output"] == "HTTP 503: /fail here"
    assert httpx.get(f"{api}/services/{svc}").status_code == 404  # renamed

    assert httpx.delete(f"{api}/services/{record['id']}").status_code == 204
    gone = httpx.get(f"{api}/services/{record['id']}")
    assert gone.status_code == 404 and record["id"] in gone.json()["detail"]
    assert not r.exists("{%s:svc}:checks:%s" % (stack.prefix, record["id"]))


def test_a_stalling_instance_is_answered_within_the_check_timeout(stack: ApiStack, upstreams: FakeService) -> None:
    svc = name()
    assert httpx.post(stack.url + "/services", json={
        "name": svc, "instances": [upstreams.url],
        "health": {"path": "/slow", "timeout_ms": 400, "failures_before_critical": 2}}).status_code == 201
    began = time.monotonic()
    first = httpx.get(f"{stack.url}/services/{svc}/health", timeout=10).json()
    assert time.monotonic() - began < 2.5
    assert first["checks"][0]["status"] == "unknown" and first["checks"][0]["output"] == "timed out after 400 ms"
    second = httpx.get(f"{stack.url}/services/{svc}/health", timeout=10).json()
    assert second["status"] == "critical"  # the second failure in a row


def test_refusals_are_problems_naming_what(stack: ApiStack, upstreams: FakeService) -> None:
    api, svc = stack.url, name()
    assert httpx.post(api + "/services", json={"name": svc, "instances": [upstreams.url]}).status_code == 201
    taken = httpx.post(api + "/services", json={"name": svc, "instances": [upstreams.url]})
    assert taken.status_code == 409 and svc in taken.json()["detail"]
    assert taken.headers["content-type"] == "application/problem+json"
    bad = httpx.post(api + "/services", json={"name": name(), "instances": ["http://user:pw@127.0.0.1:1"],
                                              "health": {"interval": "often"}})
    assert bad.status_code == 422
    assert {e["path"] for e in bad.json()["errors"]} == {"instances[0].url", "health.interval"}
    shape = httpx.post(api + "/services", json={"name": name(), "instances": "http://127.0.0.1:1"})
    assert shape.status_code == 400 and "instances" in shape.text
    metadata = httpx.post(api + "/services", json={"name": name(), "instances": ["http://169.254.169.254"]}).json()
    refused = httpx.get(f"{api}/services/{metadata['id']}/health").json()
    assert refused["status"] == "critical" and refused["checks"][0]["output"].startswith("refused: ")
    assert httpx.put(f"{api}/services/nope-{uuid.uuid4().hex[:6]}",
                     json={"instances": [upstreams.url]}).status_code == 404
    assert httpx.delete(f"{api}/services/{uuid.uuid4()}").status_code == 404


def test_listing_pages_and_filters(stack: ApiStack, upstreams: FakeService) -> None:
    tag = f"t-{uuid.uuid4().hex[:6]}"
    names = sorted(f"list-{tag}-{i}" for i in range(3))
    for svc in names:
        assert httpx.post(stack.url + "/services", json={"name": svc, "instances": [upstreams.url],
                                                         "tags": [tag]}).status_code == 201
    page = httpx.get(stack.url + "/services", params={"tag": tag, "limit": 2}).json()
    assert [s["name"] for s in page["items"]] == names[:2]
    rest = httpx.get(stack.url + "/services", params={"tag": tag, "limit": 2, "cursor": page["next_cursor"]}).json()
    assert [s["name"] for s in rest["items"]] == names[2:] and rest["next_cursor"] is None
    assert [s["name"] for s in httpx.get(stack.url + "/services", params={"name": names[1]}).json()["items"]] \
        == [names[1]]
    assert httpx.get(stack.url + "/services", params={"cursor": "%%%"}).status_code == 400
