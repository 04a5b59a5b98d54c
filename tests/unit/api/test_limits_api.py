"""The per-service limit routes in process over fakeredis: `PUT/GET/DELETE
/services/{name}/limits` and `GET /limits`, bad input answered 422 naming the field,
a registered service named by its id, and the write scope for changes."""

from __future__ import annotations

from typing import Any

import pytest

from engine.api.settings import ApiSettings
from engine.config import Settings
from tests.unit.api.conftest import app_client
from tests.unit.api.test_auth import SECRET, token


def test_put_get_list_delete(client: Any) -> None:
    put = client.put("/services/planning-system/limits", json={"in_flight": 5, "rate": {"limit": 100, "per": "1m"}})
    assert put.status_code == 200, put.text
    body = put.json()
    assert body["service"] == "planning-system" and body["limited"] and body["in_flight"] == 5
    assert body["rate"] == {"limit": 100, "per": "1m", "per_ms": 60_000}
    assert (body["lease"], body["lease_ms"]) == ("30s", 30_000)
    assert body["usage"] == {"in_flight": 0, "tokens": 100.0, "waiting": 0, "waiting_in_flight": 0,
                             "waiting_rate": 0}
    got = client.get("/services/planning-system/limits").json()
    assert got == body
    assert [i["service"] for i in client.get("/limits").json()["items"]] == ["planning-system"]
    only_rate = client.put("/services/planning-system/limits", json={"rate": {"limit": 10}, "lease": "2s"}).json()
    assert only_rate["in_flight"] is None and only_rate["rate"]["per"] == "1s" and only_rate["lease_ms"] == 2000
    assert client.delete("/services/planning-system/limits").status_code == 204
    assert client.delete("/services/planning-system/limits").status_code == 404
    unlimited = client.get("/services/planning-system/limits").json()
    assert unlimited["limited"] is False and unlimited["rate"] is None and unlimited["usage"]["tokens"] is None
    assert client.get("/limits").json() == {"items": []}


@pytest.mark.parametrize(("body", "field"), [
    ({"in_flight": 0}, "in_flight"),
    ({"in_flight": -2}, "in_flight"),
    ({"in_flight": 10**12}, "in_flight"),
    ({"rate": {"limit": 0, "per": "1m"}}, "limit"),
    ({"rate": {"limit": 5, "per": "1y"}}, "rate.per"),
    ({"rate": {"limit": 5, "per": "10ms"}}, "rate.per"),
    ({"rate": {"limit": 5, "per": "1m", "burst": 9}}, "burst"),
    ({"lease": "0s"}, "lease"),
    ({"in_flight": 2.5}, "in_flight"),
    ({"concurrency": 5}, "concurrency"),
])
def test_bad_limits_are_refused_naming_the_field(client: Any, body: dict[str, Any], field: str) -> None:
    answer = client.put("/services/svc/limits", json=body)
    assert answer.status_code in (400, 422), answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert field in answer.text, answer.text
    assert client.get("/services/svc/limits").json()["limited"] is False, "nothing was stored"


def test_bad_service_names_are_refused(client: Any) -> None:
    for bad in ("-lead", "has%20space", "x" * 150, "br%7Bace%7D"):
        answer = client.get(f"/services/{bad}/limits")
        assert answer.status_code in (400, 404, 422), (bad, answer.text)


def test_a_registered_service_may_be_named_by_its_id(client: Any) -> None:
    made = client.post("/services", json={"name": "user-service", "instances": ["http://127.0.0.1:9/"]})
    assert made.status_code == 201, made.text
    by_id = client.put(f"/services/{made.json()['id']}/limits", json={"in_flight": 3})
    assert by_id.status_code == 200 and by_id.json()["service"] == "user-service"
    assert client.get("/services/user-service/limits").json()["in_flight"] == 3
    assert client.get("/services/user-service").json()["limits"]["in_flight"] == 3, "shown with the record"
    client.delete("/services/user-service/limits")
    assert client.get("/services/user-service").json().get("limits") is None


def test_changing_limits_needs_the_write_scope(fake_settings: Settings) -> None:
    with app_client(fake_settings, ApiSettings(jwt_secret=SECRET)) as c:
        read = {"Authorization": f"Bearer {token('read')}"}
        write = {"Authorization": f"Bearer {token('write')}"}
        assert c.put("/services/s/limits", json={"in_flight": 1}, headers=read).status_code == 403
        assert c.put("/services/s/limits", json={"in_flight": 1}, headers=write).status_code == 200
        assert c.get("/services/s/limits", headers=read).json()["in_flight"] == 1
        assert c.delete("/services/s/limits", headers=read).status_code == 403
        assert c.delete("/services/s/limits", headers=write).status_code == 204
