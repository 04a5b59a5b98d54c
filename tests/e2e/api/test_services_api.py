"""The service registry through a running `foldflow api` on a real Redis, its
health checks made over real HTTP to aiohttp services these tests start on
loopback ports (healthy, failing, stalling) and to a port nobody listens on."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis
from aiohttp import web

from engine.dev.embedded import free_port
from tests.support.api_stack import ApiStack


class Upstreams:
    """aiohttp services on loopback, in a thread with a loop of their own: /ok answers 200,
    /fail 503, /slow after 3 s."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.port = free_port()
        self.hits: dict[str, int] = {}
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _answer(self, request: web.Request) -> web.Response:
        self.hits[request.path] = self.hits.get(request.path, 0) + 1
        if request.path == "/slow":
            await asyncio.sleep(3)
        return web.Response(status=503 if request.path == "/fail" else 200, text=f"{request.path} here")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        for path in ("/ok", "/fail", "/slow"):
            app.router.add_get(path, self._answer)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self.loop.run_forever()

    def __enter__(self) -> Upstreams:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@pytest.fixture(scope="module")
def upstreams() -> Iterator[Upstreams]:
    with Upstreams() as running:
        yield running


def name() -> str:
    return f"svc-{uuid.uuid4().hex[:8]}"


def test_register_read_check_update_remove(stack: ApiStack, upstreams: Upstreams) -> None:
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


def test_a_stalling_instance_is_answered_within_the_check_timeout(stack: ApiStack, upstreams: Upstreams) -> None:
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


def test_refusals_are_problems_naming_what(stack: ApiStack, upstreams: Upstreams) -> None:
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


def test_listing_pages_and_filters(stack: ApiStack, upstreams: Upstreams) -> None:
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
