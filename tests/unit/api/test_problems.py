"""Bad input of every kind answers a problem document (RFC 9457), never a 500
and never a traceback: malformed bodies (400), bodies over
FOLDFLOW_MAX_PAYLOAD_BYTES (413, declared or chunked), content types a route
does not take (415), unknown routes (404), wrong methods (405), and Redis not
answering (503 with Retry-After). The body checks walk every route of the app
that takes a body, whichever module mounts it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import fakeredis
import msgspec
import pytest
from litestar import Litestar, get
from litestar.routes import HTTPRoute
from litestar.testing import TestClient

from engine.api.app import create_app
from engine.api.problems import EXCEPTION_HANDLERS, PROBLEM_JSON, Problem, as_problem
from engine.api.settings import ApiSettings
from engine.api.surface import media_type_refusal
from engine.config import Settings
from engine.errors import StoreUnavailable
from engine.store.errors import TRANSIENT

LIMIT = 4096


def body_routes(app: Litestar) -> list[tuple[str, str]]:
    """(method, path) of every route whose handler takes a request body."""
    out: list[tuple[str, str]] = []
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for method, handler in route.route_handler_map.items():
            h = handler[0] if isinstance(handler, tuple) else handler
            if "data" in h.parsed_fn_signature.parameters:
                out.append((str(method), re.sub(r"\{(\w+)(?::\w+)?\}", "x", route.path)))
    return out


@pytest.fixture
def small(fake_settings: Settings) -> Iterator[tuple[Litestar, TestClient]]:  # type: ignore[type-arg]
    settings = msgspec.structs.replace(fake_settings, max_payload_bytes=LIMIT)
    server = fakeredis.FakeServer()
    app = create_app(settings, ApiSettings(), redis_factory=lambda: fakeredis.FakeAsyncRedis(server=server))
    with TestClient(app) as c:
        yield app, c


def is_problem(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, (r.request.method, r.request.url, r.status_code, r.text[:300])
    assert r.headers["content-type"] == PROBLEM_JSON
    doc: dict[str, Any] = r.json()
    assert doc["status"] == status and doc["title"] and doc["detail"]
    assert "Traceback" not in r.text and 'File "' not in r.text
    return doc


def test_malformed_bodies_are_400_on_every_body_route(small: tuple[Litestar, TestClient]) -> None:  # type: ignore[type-arg]
    app, c = small
    routes = body_routes(app)
    assert routes, "no route takes a body yet"
    for method, path in routes:
        for body in (b'{"', b"[1, 2", b"\xff\xfe", b'{"a": NaN}'):
            is_problem(c.request(method, path, content=body, headers={"content-type": "application/json"}), 400)


def test_bodies_over_the_limit_are_413_declared_or_chunked(small: tuple[Litestar, TestClient]) -> None:  # type: ignore[type-arg]
    app, c = small
    big = b'{"pad": "' + b"x" * (LIMIT * 2) + b'"}'
    for method, path in body_routes(app):
        is_problem(c.request(method, path, content=big, headers={"content-type": "application/json"}), 413)

        def chunks() -> Iterator[bytes]:
            for i in range(0, len(big), 512):
                yield big[i:i + 512]

        r = c.request(method, path, content=chunks(), headers={"content-type": "application/json"})
        assert "content-length" not in r.request.headers  # really sent chunked
        is_problem(r, 413)


def test_content_types_a_route_does_not_take_are_415(small: tuple[Litestar, TestClient]) -> None:  # type: ignore[type-arg]
    app, c = small
    for method, path in body_routes(app):
        for media in ("text/plain", "application/x-www-form-urlencoded", "application/xml"):
            r = c.request(method, path, content=b"{}", headers={"content-type": media})
            if r.status_code == 415:
                doc = is_problem(r, 415)
                assert media in doc["detail"] and "application/json" in r.headers["accept-post"]
            else:  # a route that declares this type in opt["accepts"] parses it itself
                handlers: Any = app.route_handler_method_map[path]
                assert media in handlers[method].opt.get("accepts", ()), (path, media)


def test_media_type_rule() -> None:
    assert media_type_refusal("application/json; charset=utf-8", ("application/json",)) is None
    assert media_type_refusal("application/merge-patch+json", ("application/json",)) is None
    assert media_type_refusal("", ("application/json",)) is None
    assert media_type_refusal("application/yaml", ("application/json", "application/yaml")) is None
    assert "text/plain" in (media_type_refusal("Text/Plain", ("application/json",)) or "")


def test_unknown_routes_are_404_and_wrong_methods_405(client: TestClient) -> None:  # type: ignore[type-arg]
    for method in ("GET", "POST", "PUT", "DELETE", "PATCH"):
        doc = is_problem(client.request(method, "/no/such/route"), 404)
        assert doc["instance"] == "/no/such/route" and "/no/such/route" in doc["detail"]
    refused = client.delete("/health/liveness")
    doc = is_problem(refused, 405)
    assert "DELETE" in doc["detail"] and "GET" in refused.headers["allow"]


def test_redis_errors_map_to_503_with_retry_after() -> None:
    for exc in (StoreUnavailable("down"), *(kind("down") for kind in TRANSIENT if kind is not OSError),
                ConnectionRefusedError("refused")):
        problem = as_problem(exc)
        assert problem.status == 503 and problem.headers["Retry-After"], exc


def test_a_bug_is_a_bare_500_with_no_internals() -> None:
    @get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals /etc/passwd")

    @get("/refuse")
    async def refuse() -> None:
        raise Problem(409, "no", headers={"X-Why": "because"})

    with TestClient(Litestar([boom, refuse], exception_handlers=EXCEPTION_HANDLERS, debug=False)) as c:
        r = c.get("/boom")
        assert r.status_code == 500 and r.headers["content-type"] == PROBLEM_JSON
        assert "secret" not in r.text and "RuntimeError" not in r.text and "Traceback" not in r.text
        assert c.get("/refuse").headers["x-why"] == "because"


def test_redis_down_is_503_on_every_route(fake_settings: Settings) -> None:
    """Every route of the table over a Redis that refuses connections: a 503 problem
    (or a 4xx for input refused before Redis is asked), never a 500."""
    settings = msgspec.structs.replace(fake_settings, redis_url="redis://127.0.0.1:1/0")
    app = create_app(settings, ApiSettings())
    unavailable = 0
    with TestClient(app) as c:
        assert c.get("/health/readiness").status_code == 503
        assert c.get("/health/readiness").headers["retry-after"]
        for route in app.routes:
            for method in sorted(getattr(route, "methods", ())):
                if method == "OPTIONS" or route.path in ("/metrics", "/health/liveness", "/docs", "/",
                                                         "/openapi.json", "/oauth2-redirect.html"):
                    continue
                if "/stream" in route.path:
                    continue  # streams are covered over a real process, with timeouts (e2e)
                path = re.sub(r"\{(\w+)(?::\w+)?\}", "x", route.path)
                r = c.request(method, path, json={})
                assert r.status_code != 500, (method, path, r.text[:300])
                if r.status_code == 503:
                    assert r.headers["retry-after"], (method, path)
                    unavailable += 1
    assert unavailable >= 2  # the routes that reach Redis did, and said so


def test_spec_declares_shared_refusals(client: TestClient) -> None:  # type: ignore[type-arg]
    spec = client.get("/openapi.json").json()
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            if "requestBody" in op:
                assert {"400", "413", "415"} <= set(op["responses"]), (method, path)
            if op.get("parameters"):
                assert "400" in op["responses"], (method, path)
            assert "503" in op["responses"], (method, path)
    health = spec["paths"]["/health/readiness"]["get"]["responses"]
    assert set(health) >= {"200", "503"}


def test_a_command_the_acl_refuses_is_a_503_naming_the_acl_not_a_500() -> None:
    from redis.exceptions import NoPermissionError

    from engine.api.problems import as_problem

    problem = as_problem(NoPermissionError("NOPERM User ff-api has no permissions to run the 'xtrim' command"))
    assert problem.status == 503 and "NOPERM" in problem.detail and "ff-api" in problem.detail
    assert "xtrim" not in problem.detail  # the log names the command, the response does not
