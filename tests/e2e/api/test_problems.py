"""Every error code of the surface, over loopback HTTP against a running
`foldflow api`: 400 malformed body, 413 above FOLDFLOW_MAX_PAYLOAD_BYTES
(declared and chunked), 415, 404, 405, and 503 with Retry-After from an API
process whose Redis does not answer (every route of its own spec, each within a
client timeout: nothing hangs, nothing answers 500)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.dev.embedded import free_port
from tests.support.api_stack import ApiStack

PROBLEM = "application/problem+json"
LIMIT = 65536
# Answers that need no Redis: validating a definition that is not stored, a test run on the
# in-memory engine, and /ping (the process answers; /health says whether Redis does).
REDIS_FREE = {"POST /workflows/validate", "POST /workflows/test", "GET /ping"}


@pytest.fixture(scope="module")
def stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiStack]:
    with ApiStack(redis_url, tmp_path_factory.mktemp("problems"), workers=False, activities=None,
                  env={"FOLDFLOW_MAX_PAYLOAD_BYTES": str(LIMIT)}) as running:
        yield running


def problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, (r.request.method, r.request.url, r.status_code, r.text[:300])
    assert r.headers["content-type"] == PROBLEM
    assert "Traceback" not in r.text and 'File "' not in r.text
    doc: dict[str, Any] = r.json()
    assert doc["status"] == status and doc["detail"]
    return doc


def test_malformed_body_is_400(api: str) -> None:
    for path in ("/events", "/executions"):
        for body in (b'{"type": ', b"\x00\xff", b'["not", "an", "object"]'):
            problem(httpx.post(api + path, content=body, headers={"content-type": "application/json"}), 400)


def test_body_over_the_limit_is_413_declared_and_chunked(api: str) -> None:
    big = b'{"type": "x", "data": {"pad": "' + b"x" * (LIMIT * 2) + b'"}}'
    problem(httpx.post(api + "/events", content=big, headers={"content-type": "application/json"}), 413)

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(big), 4096):
            yield big[i:i + 4096]

    r = httpx.post(api + "/events", content=chunks(), headers={"content-type": "application/json"})
    assert r.request.headers.get("transfer-encoding") == "chunked"
    problem(r, 413)
    # and the process still serves
    assert httpx.get(api + "/health/liveness").status_code == 200


def test_unsupported_content_type_is_415(api: str) -> None:
    doc = problem(httpx.post(api + "/events", content=b"type=x", headers={"content-type": "text/plain"}), 415)
    assert "text/plain" in doc["detail"]


def test_unknown_route_404_and_wrong_method_405(api: str) -> None:
    problem(httpx.get(api + "/definitely/not/here"), 404)
    problem(httpx.post(api + "/definitely/not/here", json={}), 404)
    problem(httpx.delete(api + "/health/readiness"), 405)


def test_unknown_execution_is_404_problem(api: str) -> None:
    problem(httpx.get(api + "/executions/no-such-execution"), 404)


@pytest.fixture(scope="module")
def down(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiStack]:
    """An API process pointed at a port where nothing listens."""
    closed = f"redis://127.0.0.1:{free_port()}/0"
    logs: Path = tmp_path_factory.mktemp("down")
    with ApiStack(closed, logs, workers=False, activities=None, ready="/health/liveness") as running:
        yield running


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, bool]]:
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method in ("get", "post", "put", "delete", "patch") and isinstance(op, dict):
                yield method.upper(), re.sub(r"\{[^}]+\}", "x", path), "requestBody" in op


def test_redis_down_every_route_503_fast(down: ApiStack) -> None:
    url = down.url
    ready = httpx.get(url + "/health/readiness", timeout=5)
    assert ready.status_code == 503 and ready.headers["retry-after"]
    assert httpx.get(url + "/health/dependencies", timeout=5).status_code == 503
    spec = httpx.get(url + "/openapi.json", timeout=5).json()
    seen: dict[str, int] = {}
    with httpx.Client(base_url=url, timeout=httpx.Timeout(8.0)) as c:
        for method, path, body in operations(spec):
            if path.startswith(("/health", "/metrics")):
                continue
            kwargs: dict[str, Any] = {"json": {}} if body else {}
            with c.stream(method, path, **kwargs) as r:  # a stream that hung would time out here
                seen[f"{method} {path}"] = r.status_code
                r.read() if r.status_code != 200 else None
                if r.status_code == 503:
                    assert r.headers["retry-after"] and r.headers["content-type"] == PROBLEM
    assert seen, "the spec lists no routes"
    assert 500 not in seen.values(), seen
    unavailable = [k for k, v in seen.items() if v == 503]
    refused_first = {k: v for k, v in seen.items() if v != 503}
    # input refused before Redis is asked (400/422) is fine, and so is an answer that needs
    # no Redis at all (validating a definition that is not stored); anything else is not
    assert all(v in (400, 422) or k in REDIS_FREE for k, v in refused_first.items()), refused_first
    assert len(unavailable) >= 3
