"""No route is left open: the whole route table of create_app(...) is walked
(every route, every method, WebSocket routes too, whatever the other modules
mount), and each route that is not /health/* or /metrics must refuse a missing,
forged, expired or wrong-algorithm token with 401 and a token without its
scope with 403. Then the JWKS path: RS256 and ES256 tokens checked against
keys a real loopback JWKS server publishes."""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import fakeredis
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from litestar import Litestar, WebSocket, websocket
from litestar.exceptions import WebSocketDisconnect
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath
from litestar.routes import HTTPRoute, WebSocketRoute
from litestar.testing import TestClient

from engine.api.app import create_app
from engine.api.auth import guard, required_scope
from engine.api.settings import ApiSettings
from engine.config import Settings

SECRET = "s3cret-" + "k" * 32
PUBLIC_PATHS = {"/health/liveness", "/health/readiness", "/health/dependencies", "/metrics",
                "/health", "/ping"}  # the last two: seed 001's (engine/api/v1/health.py)
# The web UI's shell and static assets carry no data; it asks for a token (engine/api/ui/pages.py).
UI_PATHS = {"/ui", "/ui/{page:path}"}  # not in the OpenAPI document either
BELOW = {"read": "", "write": "read", "admin": "write"}  # a scope just short of the one needed


def token(scope: str = "admin", *, key: Any = SECRET, alg: str = "HS256", exp: float | None = None,
          headers: dict[str, Any] | None = None) -> str:
    claims = {"sub": "tester", "scope": scope, "exp": int(exp if exp is not None else time.time() + 600)}
    return jwt.encode(claims, key, algorithm=alg, headers=headers)


def none_alg_token(scope: str = "admin") -> str:
    unsigned: Any = None
    return jwt.encode({"sub": "x", "scope": scope, "exp": int(time.time() + 600)}, unsigned, algorithm="none")


BAD_TOKENS: dict[str, Callable[[], str]] = {
    "forged": lambda: token(key="another-secret-" + "x" * 32),
    "expired": lambda: token(exp=time.time() - 60),
    "wrong-alg": lambda: token(alg="HS512"),
    "alg-none": none_alg_token,
    "garbage": lambda: "not.a.jwt",
    "no-expiry": lambda: jwt.encode({"sub": "x", "scope": "admin"}, SECRET, algorithm="HS256"),
}


def concrete(path: str) -> str:
    """A request path for a route template: every parameter filled with a value of its type."""
    values = {"int": "1", "uuid": str(uuid.uuid4()), "float": "1.0", "path": "x/y"}
    return re.sub(r"\{(\w+)(?::(\w+))?\}", lambda m: values.get(m.group(2) or "str", "x"), path)


def walk(app: Litestar) -> Iterator[tuple[str, str, Any]]:
    """(kind, path, handler) for every method of every route the app serves."""
    for route in app.routes:
        if isinstance(route, WebSocketRoute):
            yield "websocket", route.path, route.route_handler
        elif isinstance(route, HTTPRoute):
            for method, handler in route.route_handler_map.items():
                yield method, route.path, handler[0] if isinstance(handler, tuple) else handler
        else:  # pragma: no cover - an ASGI mount would need its own auth story
            pytest.fail(f"{route.path}: a {type(route).__name__} route, which the guard does not cover")


@pytest.fixture
def app(fake_settings: Settings) -> Litestar:
    server = fakeredis.FakeServer()
    return create_app(fake_settings, ApiSettings(jwt_secret=SECRET),
                      redis_factory=lambda: fakeredis.FakeAsyncRedis(server=server))


def answer(c: TestClient, kind: str, path: str, bearer: str | None) -> int:  # type: ignore[type-arg]
    """The HTTP status (or, for a WebSocket, the close code minus 4000) a request gets."""
    headers = {"Authorization": f"Bearer {bearer}"} if bearer is not None else {}
    if kind != "websocket":
        return c.request(kind, concrete(path), headers=headers).status_code
    try:
        with c.websocket_connect(concrete(path), headers=headers) as ws:
            ws.close()
    except WebSocketDisconnect as exc:
        return int(exc.code) - 4000
    return 101


def test_only_health_and_metrics_are_public(app: Litestar) -> None:
    table = list(walk(app))
    assert {p for _, p, _ in table} >= PUBLIC_PATHS | {"/openapi.json", "/docs"}
    public = {(kind, path) for kind, path, handler in table if required_scope(handler) is None}
    assert public == {("GET", p) for p in PUBLIC_PATHS | UI_PATHS}
    with TestClient(app) as c:
        for _, path in public:
            assert c.get(path).status_code in (200, 503), path


def test_every_other_route_refuses_without_a_good_token(app: Litestar) -> None:
    guarded = [(k, p, h) for k, p, h in walk(app) if required_scope(h) is not None]
    assert len(guarded) >= 8  # the docs, the spec and OPTIONS of every route at least
    refused: list[str] = []
    with TestClient(app) as c:
        for kind, path, handler in guarded:
            scope = required_scope(handler)
            assert scope is not None
            got = {"none": answer(c, kind, path, None),
                   **{name: answer(c, kind, path, make()) for name, make in BAD_TOKENS.items()}}
            got["no-scope"] = answer(c, kind, path, token(BELOW[scope]))
            want = {name: 401 for name in got} | {"no-scope": 403}
            if got != want:
                refused.append(f"{kind} {path} (needs {scope}): {got}")
    assert not refused, "routes not refusing as they must:\n" + "\n".join(refused)


def test_scopes_follow_methods_and_nest(app: Litestar) -> None:
    for kind, path, handler in walk(app):
        scope = required_scope(handler)
        if scope is None or handler.opt.get("scope"):
            continue
        reads = kind in ("GET", "HEAD", "OPTIONS", "websocket")
        assert scope == ("read" if reads else "write"), (kind, path, scope)
    with TestClient(app) as c:
        for scope in ("read", "write", "admin"):
            assert c.get("/openapi.json", headers={"Authorization": f"Bearer {token(scope)}"}).status_code == 200
        query = c.get("/openapi.json", params={"access_token": token("read")})
        assert query.status_code == 200
        spec = query.json()
        assert spec["components"]["securitySchemes"]["bearer"] == {
            "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
            "description": "A JWT whose `scope` claim grants read, write or admin"}
        assert spec["security"] == [{"bearer": []}]
        for path in PUBLIC_PATHS:  # the spec says these take no token, as the guard does
            assert spec["paths"][path]["get"]["security"] == [{}], path


def test_refusals_are_problems_naming_the_scope(app: Litestar) -> None:
    with TestClient(app) as c:
        none = c.get("/openapi.json")
        assert none.headers["content-type"] == "application/problem+json"
        assert none.headers["www-authenticate"] == 'Bearer scope="read"'
        low = c.get("/openapi.json", headers={"Authorization": f"Bearer {token('')}"})
        assert low.status_code == 403 and "'read'" in low.json()["detail"]
        expired = c.get("/openapi.json", headers={"Authorization": f"Bearer {token(exp=time.time() - 5)}"})
        assert "expired" in expired.json()["detail"] and "Traceback" not in expired.text


def test_audience_is_checked_when_configured(fake_settings: Settings) -> None:
    api = ApiSettings(jwt_secret=SECRET, jwt_audience="foldflow")
    with TestClient(create_app(fake_settings, api, redis_factory=fakeredis.FakeAsyncRedis)) as c:
        def status(aud: str | None) -> int:
            claims = {"scope": "read", "exp": int(time.time()) + 60, **({"aud": aud} if aud else {})}
            bearer = jwt.encode(claims, SECRET, algorithm="HS256")
            return c.get("/openapi.json", headers={"Authorization": f"Bearer {bearer}"}).status_code

        assert (status("foldflow"), status("another-service"), status(None)) == (200, 401, 401)


@websocket("/ws/probe/{name:str}")
async def probe_socket(socket: WebSocket[Any, Any, Any], name: FromPath[str]) -> None:
    await socket.accept()
    await socket.send_text(name)
    await socket.close()


def test_a_websocket_refusal_is_a_close_code() -> None:
    """The guard on a WebSocket closes with 4401/4403 (4000 + the HTTP status)."""
    app = Litestar([probe_socket], guards=[guard], state=None)
    from litestar.datastructures import State

    from engine.api.auth import TokenVerifier

    app.state = State({"verifier": TokenVerifier(ApiSettings(jwt_secret=SECRET))})
    with TestClient(app) as c:
        assert answer(c, "websocket", "/ws/probe/{name}", None) == 401
        assert answer(c, "websocket", "/ws/probe/{name}", token("")) == 403
        assert answer(c, "websocket", "/ws/probe/{name}", BAD_TOKENS["forged"]()) == 401
        with c.websocket_connect("/ws/probe/hi", params={"access_token": token("read")}) as ws:
            assert ws.receive_text() == "hi"


# -- JWKS: an identity provider's keys, from a real loopback server ----------

class Keys:
    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwks(self) -> bytes:
        keys = []
        for kid, alg, private in (("rsa-1", "RS256", self.rsa), ("ec-1", "ES256", self.ec)):
            jwk = json.loads(jwt.algorithms.get_default_algorithms()[alg].to_jwk(private.public_key()))
            keys.append({**jwk, "kid": kid, "alg": alg, "use": "sig"})
        return json.dumps({"keys": keys}).encode()


@pytest.fixture(scope="module")
def idp() -> Iterator[tuple[str, Keys]]:
    keys = Keys()
    body = keys.jwks()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json", keys
    finally:
        server.shutdown()
        server.server_close()


def jwks_client(settings: Settings, url: str) -> TestClient:  # type: ignore[type-arg]
    return TestClient(create_app(settings, ApiSettings(jwks_url=url, jwt_algorithm="RS256"),
                                 redis_factory=fakeredis.FakeAsyncRedis))


def test_jwks_rs256_and_es256(fake_settings: Settings, idp: tuple[str, Keys]) -> None:
    url, keys = idp
    with jwks_client(fake_settings, url) as c:
        def status(t: str) -> int:
            return c.get("/openapi.json", headers={"Authorization": f"Bearer {t}"}).status_code

        assert status(token("read", key=keys.rsa, alg="RS256", headers={"kid": "rsa-1"})) == 200
        assert status(token("read", key=keys.ec, alg="ES256", headers={"kid": "ec-1"})) == 200
        assert status(token("", key=keys.rsa, alg="RS256", headers={"kid": "rsa-1"})) == 403
        # signed by a key the provider does not publish, under a kid it does
        assert status(token("read", key=keys.stranger, alg="RS256", headers={"kid": "rsa-1"})) == 401
        assert status(token("read", key=keys.stranger, alg="RS256", headers={"kid": "nobody"})) == 401
        assert status(token("read", key=keys.rsa, alg="RS256", headers={"kid": "rsa-1"},
                            exp=time.time() - 60)) == 401
        # an HMAC token under a published kid: the algorithm-confusion attack
        assert status(token("read", key="k" * 32, alg="HS256", headers={"kid": "rsa-1"})) == 401
        assert status(token("read", key=keys.rsa, alg="RS256")) == 401  # no kid at all


def test_jwks_provider_down_is_503_not_401(fake_settings: Settings, idp: tuple[str, Keys]) -> None:
    _, keys = idp
    with jwks_client(fake_settings, "http://127.0.0.1:1/jwks.json") as c:
        r = c.get("/openapi.json", headers={
            "Authorization": f"Bearer {token('read', key=keys.rsa, alg='RS256', headers={'kid': 'rsa-1'})}"})
        assert r.status_code == 503 and r.headers["retry-after"]
        assert r.headers["content-type"] == "application/problem+json"


def test_health_takes_no_token_even_with_jwks(fake_settings: Settings, idp: tuple[str, Keys]) -> None:
    with jwks_client(fake_settings, idp[0]) as c:
        assert c.get("/health/liveness").status_code == 200
        assert c.get("/metrics").status_code == 200


def test_handlers_are_litestar_handlers(app: Litestar) -> None:
    # walk() must see the real handler objects, or required_scope would read the wrong opt
    kinds = {type(h) for k, _, h in walk(app) if k != "websocket"}
    assert all(issubclass(t, HTTPRouteHandler) for t in kinds)
