"""The service registry on fakeredis (engine/store/services.py), its health checks
against loopback HTTP servers the tests start (engine/workers/http/health.py), and
the `/services` routes in process (the e2e tier runs them in a `foldflow api`)."""

from __future__ import annotations

import asyncio
import http.server
import threading
from collections.abc import Iterator
from typing import Any

import aiohttp
import fakeredis
import pytest
from aiohttp import web

from engine.config import Settings
from engine.dev.embedded import free_port
from engine.errors import NotFound, Refused
from engine.outbound.health import check_instance, check_service, checking_session, ssl_context
from engine.store.keys import Keys
from engine.store.services import InstanceCheck, InvalidService, ServiceRegistry, aggregate
from tests.unit.api.conftest import app_client


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def registry() -> ServiceRegistry:
    return ServiceRegistry(fakeredis.FakeAsyncRedis(), Keys("t"))


BODY = {"name": "user-service", "instances": ["http://127.0.0.1:9/"], "headers": {"X-Key": "{{ secrets.KEY }}"}}


# -- records --------------------------------------------------------------------
def test_register_and_get_by_id_or_name() -> None:
    async def go() -> None:
        reg = registry()
        assert await reg.version() == 0
        record = await reg.register({**BODY, "health": {"interval": "30s", "timeout_ms": 500}, "timeout": "5s"})
        assert record.instances[0].url == "http://127.0.0.1:9"  # trailing slash dropped: endpoints start with /
        assert (record.health.interval_ms, record.health.timeout_ms, record.timeout_ms) == (30_000, 500, 5_000)
        assert record.headers == {"X-Key": "{{ secrets.KEY }}"}  # stored as written, never resolved
        assert await reg.get(record.id) == record == await reg.get("user-service")
        assert await reg.get("nope") is None
        assert await reg.version() == 1
        assert [r.name for r in await reg.all()] == ["user-service"]
    run(go())


def test_a_taken_name_is_refused() -> None:
    async def go() -> None:
        reg = registry()
        first = await reg.register(BODY)
        with pytest.raises(Refused, match=first.id):
            await reg.register({**BODY, "instances": ["http://127.0.0.1:10"]})
        assert len(await reg.all()) == 1 and await reg.version() == 1
    run(go())


@pytest.mark.parametrize(("body", "path", "words"), [
    ({"name": "x", "instances": ["ftp://a"]}, "instances[0].url", "absolute http(s) URL"),
    ({"name": "x", "instances": [{"url": "http://a/b?c=1"}]}, "instances[0].url", "no query"),
    ({"name": "x", "instances": ["http://u:p@a"]}, "instances[0].url", "no credentials"),
    ({"name": "x", "instances": ["http://a:99999"]}, "instances[0].url", "invalid port"),
    ({"name": "x", "instances": ["http://a", "http://a/"]}, "instances[1].url", "twice"),
    ({"name": "x", "instances": [{"url": "http://a", "weight": 0}]}, "instances[0].weight", "from 1"),
    ({"name": "x", "instances": []}, "instances", "non-empty"),
    ({"name": "Bad Name", "instances": ["http://a"]}, "name", "a-z"),
    ({"name": "6f1d3f0e-2b7c-4a8e-9c1d-f01df10f0000", "instances": ["http://a"]}, "name", "UUID"),
    ({"instances": ["http://a"]}, "name", "a-z"),
    ({"name": "x", "instances": ["http://a"], "health": {"interval": "soon"}}, "health.interval", "not a duration"),
    ({"name": "x", "instances": ["http://a"], "health": {"interval": "1s", "interval_ms": 1000}},
     "health.interval", "not both"),
    ({"name": "x", "instances": ["http://a"], "health": {"timeout": "5m"}}, "health.timeout", "from 1 ms to 30000 ms"),
    ({"name": "x", "instances": ["http://a"], "health": {"path": "health"}}, "health.path", "start with /"),
    ({"name": "x", "instances": ["http://a"], "headers": {"Bad Header": "v"}}, "headers.Bad Header", "header name"),
    ({"name": "x", "instances": ["http://a"], "headers": {"X": "a\r\nB: c"}}, "headers.X", "CR, LF"),
    ({"name": "x", "instances": ["http://a"], "tls": {"client_key": "/k.pem"}}, "tls.client_key", "client_cert"),
    ({"name": "x", "instances": ["http://a"], "colour": "red"}, "colour", "not a field"),
])
def test_bad_bodies_name_the_field(body: dict[str, Any], path: str, words: str) -> None:
    with pytest.raises(InvalidService) as caught:
        run(registry().register(body))
    assert any(p == path and words in m for p, m in caught.value.problems), caught.value.problems


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(InvalidService) as caught:
        run(registry().register({"name": "", "instances": ["nope"], "tags": [""], "zz": 1}))
    assert {p for p, _ in caught.value.problems} == {"name", "instances[0].url", "tags[0]", "zz"}


def test_update_replaces_keeps_id_and_creation_renames_and_prunes_checks() -> None:
    async def go() -> None:
        reg = registry()
        old = await reg.register({**BODY, "instances": ["http://127.0.0.1:9", "http://127.0.0.1:10"]}, now_ms=1000)
        await reg.record_checks(old.id, {u: InstanceCheck(url=u, status="passing", checked_at=5)
                                         for u in ("http://127.0.0.1:9", "http://127.0.0.1:10")})
        new = await reg.update("user-service", {"name": "users", "instances": ["http://127.0.0.1:10"]}, now_ms=2000)
        assert (new.id, new.created_at, new.updated_at, new.name) == (old.id, 1000, 2000, "users")
        assert new.headers == {}  # PUT replaces: what the body leaves out takes its default
        assert await reg.get("user-service") is None and await reg.get("users") == new
        assert set(await reg.checks(old.id)) == {"http://127.0.0.1:10"}
        kept = await reg.update(old.id, {"instances": ["http://127.0.0.1:10"]})
        assert kept.name == "users"
        await reg.register({**BODY, "name": "other"})
        with pytest.raises(Refused):
            await reg.update("users", {"name": "other", "instances": ["http://a"]})
        with pytest.raises(NotFound):
            await reg.update("missing", BODY)
        assert await reg.version() == 4
    run(go())


def test_remove_takes_name_checks_and_lock_with_it() -> None:
    async def go() -> None:
        reg = registry()
        record = await reg.register(BODY)
        await reg.record_checks(record.id, {"http://127.0.0.1:9": InstanceCheck(url="http://127.0.0.1:9")})
        assert await reg.claim_check(record.id, 60_000)
        assert await reg.remove("user-service") and not await reg.remove("user-service")
        assert await reg.get(record.id) is None and await reg.version() == 2
        assert await reg.claim_check(record.id, 60_000)  # the lock went with it
        # A check that finishes after the removal leaves nothing behind.
        await reg.record_checks(record.id, {"http://127.0.0.1:9": InstanceCheck(url="http://127.0.0.1:9")})
        assert await reg.checks(record.id) == {}
        assert await reg.redis.keys("*checks*") == []
    run(go())


def test_claim_check_is_one_process_per_interval() -> None:
    async def go() -> None:
        reg = registry()
        assert await reg.claim_check("s", 60_000)
        assert not await reg.claim_check("s", 60_000)
        assert await reg.redis.pttl(reg.keys.service_checking("s")) > 59_000
    run(go())


def test_aggregate() -> None:
    def c(status: Any) -> InstanceCheck:
        return InstanceCheck(url="u", status=status)
    assert aggregate([]) == "unknown" and aggregate([c("unknown")]) == "unknown"
    assert aggregate([c("passing"), c("passing")]) == "passing"
    assert aggregate([c("passing"), c("critical")]) == "warning"
    assert aggregate([c("critical"), c("unknown")]) == "critical"


# -- health checks ------------------------------------------------------------------
class Answers:
    """A loopback aiohttp service whose /health answers what the test queues."""

    def __init__(self) -> None:
        self.queue: list[Any] = []
        self.hits = 0

    async def health(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        answer = self.queue.pop(0) if self.queue else 200
        if answer == "stall":
            await asyncio.sleep(1)
        if answer == 302:
            raise web.HTTPFound("/elsewhere")
        return web.Response(status=int(answer) if answer != "stall" else 200, text="x" * 5000 if answer == 299 else "ok")


async def serving(answers: Answers) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_get("/health", answers.health)
    app.router.add_get("/elsewhere", answers.health)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


def test_checks_pass_fail_and_turn_critical_after_the_threshold() -> None:
    async def go() -> None:
        answers = Answers()
        runner, url = await serving(answers)
        reg = registry()
        record = await reg.register({"name": "svc", "instances": [url], "health": {"failures_before_critical": 2,
                                                                                   "timeout_ms": 300}})
        try:
            async with checking_session() as session:
                answers.queue = [500, 500, 200, 302, "stall", 299]
                seen = [(await check_service(session, reg, record, n))[url] for n in range(6)]
        finally:
            await runner.cleanup()
        assert [(c.status, c.consecutive_failures) for c in seen] == [
            ("unknown", 1), ("critical", 2), ("passing", 0), ("passing", 1), ("critical", 2), ("passing", 0)]
        assert seen[0].output.startswith("HTTP 500: ") and seen[2].output == "HTTP 200: ok"
        assert "not followed" in seen[3].output and answers.hits == 6  # the redirect was not followed
        assert seen[4].output == "timed out after 300 ms"
        assert len(seen[5].output) == 1024
        assert (await reg.checks(record.id))[url] == seen[5]
    run(go())


def test_unreachable_and_refused_addresses_are_failed_checks() -> None:
    async def go() -> None:
        reg = registry()
        closed = f"http://127.0.0.1:{free_port()}"
        record = await reg.register({"name": "svc", "instances": [closed, "http://169.254.169.254"],
                                     "health": {"timeout_ms": 500}})
        async with checking_session() as session:
            down = await check_instance(session, record, record.instances[0], None, 1)
            metadata = await check_instance(session, record, record.instances[1], None, 1)
        assert down.status == "unknown" and down.consecutive_failures == 1 and "Connect" in down.output
        # Refused before any connection is tried; it will not start passing by itself.
        assert metadata.status == "critical" and metadata.output.startswith("refused: ")
    run(go())


def test_tls_files_that_are_not_files_fail_the_check(tmp_path: Any) -> None:
    async def go() -> None:
        reg = registry()
        record = await reg.register({"name": "svc", "instances": ["https://127.0.0.1:9"],
                                     "tls": {"ca_bundle": str(tmp_path)}})
        with pytest.raises(ValueError, match="not a regular file"):
            ssl_context(record)
        async with checking_session() as session:
            check = await check_instance(session, record, record.instances[0], None, 1)
        assert check.status == "unknown" and "regular file" in check.output
    run(go())
    assert ssl_context(run(registry().register(BODY))) is True


# -- the routes ------------------------------------------------------------------------
class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 503)
        self.end_headers()
        self.wfile.write(b"fine")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def healthy() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_routes(fake_settings: Settings, healthy: str) -> None:
    with app_client(fake_settings) as c:
        made = c.post("/services", json={"name": "user-service", "instances": [healthy],
                                         "tags": ["seed-004"], "health": {"interval": "10s"}})
        assert made.status_code == 201, made.text
        sid = made.json()["id"]
        assert made.headers["location"] == f"/services/{sid}"
        assert made.json()["instances"][0] == {"url": healthy, "weight": 1, "status": "unknown", "output": "",
                                               "checked_at": None, "consecutive_failures": 0}
        again = c.post("/services", json={"name": "user-service", "instances": [healthy]})
        assert again.status_code == 409 and again.headers["content-type"] == "application/problem+json"
        bad = c.post("/services", json={"name": "x", "instances": ["http://a/b?q=1"]})
        assert bad.status_code in (400, 422) and "instances" in bad.text
        odd = c.post("/services", json={"name": "x", "instances": [{"url": "http://u:p@a"}]})
        assert odd.status_code == 422 and odd.json()["errors"][0]["path"] == "instances[0].url"
        assert c.get("/services/user-service").json()["id"] == sid
        missing = c.get("/services/nope")
        assert missing.status_code == 404 and "'nope'" in missing.json()["detail"]
        checked = c.get(f"/services/{sid}/health").json()
        assert checked["status"] == "passing"
        assert checked["checks"][0]["url"] == healthy and checked["checks"][0]["output"] == "HTTP 200: fine"
        assert c.get(f"/services/{sid}").json()["status"] == "passing"
        put = c.put(f"/services/{sid}", json={"instances": [healthy], "health": {"path": "/missing"}})
        assert put.status_code == 200 and put.json()["name"] == "user-service"
        assert c.get("/services/user-service/health").json()["checks"][0]["output"].startswith("HTTP 503")
        for name in ("b-svc", "c-svc"):
            assert c.post("/services", json={"name": name, "instances": [healthy]}).status_code == 201
        page = c.get("/services", params={"limit": 2}).json()
        assert [s["name"] for s in page["items"]] == ["b-svc", "c-svc"] and page["next_cursor"]
        rest = c.get("/services", params={"limit": 2, "cursor": page["next_cursor"]}).json()
        assert [s["name"] for s in rest["items"]] == ["user-service"] and rest["next_cursor"] is None
        assert [s["name"] for s in c.get("/services", params={"tag": "seed-004"}).json()["items"]] == []
        assert [s["name"] for s in c.get("/services", params={"name": "C-"}).json()["items"]] == ["c-svc"]
        assert c.delete("/services/user-service").status_code == 204
        assert c.delete("/services/user-service").status_code == 404


def test_a_check_of_a_refused_address_is_critical_not_an_error(fake_settings: Settings) -> None:
    with app_client(fake_settings) as c:
        sid = c.post("/services", json={"name": "meta", "instances": ["http://169.254.169.254"]}).json()["id"]
        checked = c.get(f"/services/{sid}/health")
        assert checked.status_code == 200 and checked.json()["status"] == "critical"


def test_session_is_closed_with_the_app(fake_settings: Settings) -> None:
    with app_client(fake_settings) as c:
        session: aiohttp.ClientSession = c.app.state.directory.session
        assert not session.closed
    assert session.closed
