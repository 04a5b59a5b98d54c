"""The web UI's routes over an in-process fake Redis: the shell and assets (public,
with a strict CSP), and the routes the UI added to the API: workers, dead letters
(list, show, replay, drop) and signals, each refusing bad input with a problem."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import fakeredis
import orjson
import pytest
from litestar.testing import TestClient

from engine.api.app import create_app
from engine.api.settings import ApiSettings
from engine.api.ui.pages import ASSETS
from engine.config import Settings
from engine.core.codec import command_fields
from engine.store.keys import Keys


@pytest.fixture
def served(fake_settings: Settings) -> Iterator[tuple[TestClient, fakeredis.FakeRedis, Keys]]:  # type: ignore[type-arg]
    server = fakeredis.FakeServer()
    app = create_app(fake_settings, ApiSettings(), redis_factory=lambda: fakeredis.FakeAsyncRedis(server=server))
    with TestClient(app) as client:
        yield client, fakeredis.FakeRedis(server=server), Keys(fake_settings.prefix, fake_settings.partitions)


def test_the_shell_answers_every_page_path_with_a_strict_csp(served: Any) -> None:
    client, _, _ = served
    for path in ("/ui", "/ui/", "/ui/executions/x-1", "/ui/definitions/Agent%20Task"):
        r = client.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), path
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
        assert r.headers["x-content-type-options"] == "nosniff"
        assert '<script type="module" src="/ui/static/app.js">' in r.text
    # No inline script or style anywhere: the CSP would refuse it.
    shell = ASSETS["index.html"].body.decode()
    assert not re.search(r"<script(?![^>]*\bsrc=)", shell) and "style=" not in shell


def test_assets_are_served_with_their_type_and_revalidate_by_etag(served: Any) -> None:
    client, _, _ = served
    r = client.get("/ui/static/app.js")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
    assert client.get("/ui/static/app.js", headers={"If-None-Match": r.headers["etag"]}).status_code == 304
    assert client.get("/ui/static/ui.css").headers["content-type"].startswith("text/css")
    for missing in ("/ui/static/nope.js", "/ui/static/..%2Fpages.py", "/ui/static/x/app.js"):
        r = client.get(missing)
        assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json", missing
    # Every module the shell loads imports only modules that are shipped.
    for name, asset in ASSETS.items():
        if name.endswith(".js"):
            for imported in re.findall(r'from "\./([\w.]+)"|import\("\./([\w.]+)"\)', asset.body.decode()):
                assert "".join(imported) in ASSETS, (name, imported)


def test_no_module_writes_markup_from_data(served: Any) -> None:
    for name, asset in ASSETS.items():
        if name.endswith(".js"):
            text = asset.body.decode()
            assert "innerHTML" not in text and "outerHTML" not in text and "insertAdjacentHTML" not in text, name
            assert "eval(" not in text and "new Function" not in text, name


def test_workers_lists_heartbeats_lag_and_dead_letter_counts(served: Any) -> None:
    client, redis, keys = served

    def beat() -> None:
        redis.hset(keys.heartbeat("w-1"), mapping={
            "consumer": "w-1", "role": "engine", "host": "h", "pid": 7, "version": "0.1.0", "started_ms": 1,
            "ts": 2, "counters": orjson.dumps({"commands": 3}), "services": b"[]", "http": b"[]",
            "partitions": orjson.dumps([0, 2])})
        redis.zadd(keys.heartbeats, {"w-1": 2})
        redis.xadd(keys.dlq(1), {"reason": "x"})
    beat()
    doc = client.get("/workers").json()
    (worker,) = doc["workers"]
    assert worker["consumer"] == "w-1" and worker["partitions"] == [0, 2] and worker["counters"] == {"commands": 3}
    assert doc["partitions"] == keys.partitions and doc["dead_letters"]["1"] == 1 and doc["dead_letters"]["events"] == 0


def test_dead_letters_list_show_replay_and_drop(served: Any) -> None:
    client, redis, keys = served
    original = {k: v.decode() if isinstance(v, bytes) else v
                for k, v in command_fields("signal", "i-1", {"name": "n", "payload": 1}, "c-1").items()}

    def add() -> list[str]:
        ids = []
        for source in (keys.inbox(0), "elsewhere"):
            entry = redis.xadd(keys.dlq(0), {"reason": "poison", "source": source, "entry_id": "1-0",
                                                   "fields": orjson.dumps(original)})
            ids.append(entry.decode())
        return ids
    good, bad = add()
    items = client.get("/dead-letters", params={"partition": "0"}).json()["items"]
    assert [d["ref"] for d in items] == [f"0/{good}", f"0/{bad}"] and items[0]["replayable"] and not items[1]["replayable"]
    assert client.get("/dead-letters", params={"reason_contains": "nothing like it"}).json()["items"] == []
    shown = client.get(f"/dead-letters/0/{good}").json()
    assert shown["fields"] == original and shown["source"] == keys.inbox(0)
    refused = client.post(f"/dead-letters/0/{bad}/replay")
    assert refused.status_code == 409 and "replay refused" in refused.json()["detail"]
    replayed = client.post(f"/dead-letters/0/{good}/replay")
    assert replayed.status_code == 200, replayed.text
    inbox = redis.xrange(keys.inbox(0))
    assert [e[0].decode() for e in inbox] == [replayed.json()["new_id"]]
    assert client.get(f"/dead-letters/0/{good}").status_code == 404
    assert client.delete(f"/dead-letters/0/{bad}").status_code == 204
    assert client.delete(f"/dead-letters/0/{bad}").status_code == 404


@pytest.mark.parametrize("path, status, says", [
    ("/dead-letters/99/1-0", 400, "partition '99'"),
    ("/dead-letters/zero/1-0", 400, "Validation failed"),
    ("/dead-letters/0/not-an-id", 400, "Validation failed"),
    ("/dead-letters/0/1-0", 404, "no dead letter 1-0"),
    ("/dead-letters?limit=0", 400, "Validation failed"),
])
def test_dead_letter_refusals_are_problems(served: Any, path: str, status: int, says: str) -> None:
    client, _, _ = served
    r = client.get(path)
    assert r.status_code == status and says in r.json()["detail"], r.text
    assert r.headers["content-type"] == "application/problem+json"


def test_signal_refusals_name_the_problem(served: Any) -> None:
    client, _, _ = served
    r = client.post("/executions/nope/signal", json={"name": "go"})
    assert r.status_code == 404 and "nope" in r.json()["detail"]
    r = client.post("/executions/nope/signal", json={"name": "1 bad"})
    assert r.status_code == 400 and r.json()["errors"][0]["path"] == "name"
    r = client.post("/executions/nope/signal", json={"name": "go", "extra": 1})
    assert r.status_code == 400
