"""/metrics after requests to templated routes: seed 000's
`api_request_count` and `api_request_duration_seconds`, labelled by method,
route template and status, never by a raw path or an id."""

from __future__ import annotations

import uuid

from litestar.testing import TestClient
from prometheus_client.parser import text_string_to_metric_families


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def test_labels_are_route_templates_never_ids(client: TestClient) -> None:  # type: ignore[type-arg]
    ids = [uuid.uuid4().hex for _ in range(3)]
    for i in ids:
        client.get(f"/executions/{i}")
        client.get(f"/no-such/{i}")
    client.get("/health/liveness")
    client.post("/events", content=b"{", headers={"content-type": "application/json"})
    text = client.get("/metrics").text
    assert not any(i in text for i in ids)
    got = samples(text)
    counts = {(s["method"], s["route"], s["status"]): v for s, v in got["api_request_count_total"]}
    assert counts[("GET", "/executions/{execution_id}", "404")] == 3
    assert counts[("GET", "unmatched", "404")] == 3
    assert counts[("GET", "/health/liveness", "200")] == 1
    assert counts[("POST", "/events", "400")] == 1
    durations = {(s["method"], s["route"], s["status"]): v for s, v in got["api_request_duration_seconds_count"]}
    assert durations[("GET", "/executions/{execution_id}", "404")] == 3
    buckets = [s for s, _ in got["api_request_duration_seconds_bucket"]
               if s["route"] == "/executions/{execution_id}"]
    assert {b["le"] for b in buckets} >= {"0.005", "+Inf"}
    assert {tuple(sorted(s)) for s, _ in got["api_request_count_total"]} == {("method", "route", "status")}


def test_exposition_is_prometheus_text(client: TestClient) -> None:  # type: ignore[type-arg]
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=")
    assert "# TYPE api_request_count counter" in r.text or "# TYPE api_request_count_total counter" in r.text
