"""The definitions and steps routes in process over fakeredis: seed 000's JSON
body and the YAML example verbatim, idempotent re-registration, versions,
validation, deactivation (the Python Client's start is refused too), steps by
id and by name, and every refusal as a problem with nothing stored."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import fakeredis
import msgspec
import pytest
from litestar.testing import TestClient

from engine.api.app import create_app
from engine.api.definitions import next_version
from engine.api.settings import ApiSettings
from engine.client import Client
from engine.config import Settings
from engine.errors import Refused

EXAMPLES = Path(__file__).resolve().parents[3] / "engine/dev/examples"
SEED = (EXAMPLES / "agent-task-execution.json").read_bytes()
YAML = (EXAMPLES / "user-registration.yaml").read_bytes()
JSON_TYPE = {"content-type": "application/json"}
YAML_TYPE = {"content-type": "application/yaml"}
T = TypeVar("T")


class Api:
    def __init__(self, http: TestClient, server: fakeredis.FakeServer, settings: Settings) -> None:  # type: ignore[type-arg]
        self.http, self.server, self.settings = http, server, settings

    def engine(self, use: Callable[[Client], Awaitable[T]]) -> T:
        """Run `use` with a Python Client on the same (fake) Redis as the app, as the CLI would."""
        async def run() -> T:
            client = Client(fakeredis.FakeAsyncRedis(server=self.server), self.settings)
            try:
                return await use(client)
            finally:
                await client.close()
        return asyncio.run(run())

    def keys_now(self) -> set[bytes]:
        keys: list[Any] = self.engine(lambda c: c.redis.keys("*"))
        return set(keys)


@pytest.fixture
def api(fake_settings: Settings) -> Iterator[Api]:
    server = fakeredis.FakeServer()
    app = create_app(fake_settings, ApiSettings(), redis_factory=lambda: fakeredis.FakeAsyncRedis(server=server))
    with TestClient(app) as http:
        yield Api(http, server, fake_settings)


def seed(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(SEED)
    doc.update(changes)
    return doc


def problem(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text[:500])
    assert r.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = r.json()
    assert body["status"] == status and "Traceback" not in r.text
    return body


def test_the_seed_body_registers_201_with_ids_times_and_active(api: Api) -> None:
    r = api.http.post("/workflows", content=SEED, headers=JSON_TYPE)
    assert r.status_code == 201, r.text
    wf = r.json()
    assert (wf["name"], wf["version"], wf["description"]) == ("Agent Task Execution", "1.0.0",
                                                             "Workflow for agent task execution process")
    assert wf["active"] is True and wf["created_at"] and wf["created_at"] == wf["updated_at"]
    steps = wf["definition"]["steps"]
    assert [s["name"] for s in steps] == ["task_preparation", "agent_assignment", "execution_monitoring",
                                          "result_processing"]
    assert len({s["id"] for s in steps}) == 4 and wf["id"] not in {s["id"] for s in steps}
    assert len(wf["definition"]["error_handlers"]) == 2
    assert api.http.get(f"/workflows/{wf['id']}").json() == wf
    assert api.http.get("/workflows/Agent Task Execution").json() == wf


def test_reposting_the_same_version_is_a_200_replay_and_a_different_body_409(api: Api) -> None:
    first = api.http.post("/workflows", content=SEED, headers=JSON_TYPE).json()
    again = api.http.post("/workflows", content=SEED, headers=JSON_TYPE)
    assert again.status_code == 200 and again.json() == first
    before = api.keys_now()
    doc = problem(api.http.post("/workflows", json=seed(description="another body")), 409)
    assert "1.0.0" in doc["detail"] and "different body" in doc["detail"]
    assert api.keys_now() == before
    assert api.http.get(f"/workflows/{first['id']}").json()["description"] == first["description"]


def test_the_yaml_example_verbatim_and_json_written_as_yaml(api: Api) -> None:
    r = api.http.post("/workflows", content=YAML, headers=YAML_TYPE)
    assert r.status_code == 201, r.text
    wf = r.json()
    assert (wf["name"], wf["version"]) == ("user-registration-workflow", "1.2.0")
    assert all(s["id"] for s in wf["definition"]["steps"])
    assert all(s["id"] for s in wf["definition"]["compensation"]["steps"])
    as_yaml = api.http.post("/workflows", content=SEED, headers={"content-type": "application/yaml; charset=utf-8"})
    assert as_yaml.status_code == 201 and as_yaml.json()["name"] == "Agent Task Execution"


def test_an_invalid_definition_is_422_with_every_problem_and_path_and_nothing_stored(api: Api) -> None:
    body = seed()
    body["definition"]["steps"][1]["depends_on"] = ["no_such_step"]
    body["definition"]["steps"][2]["step_type"] = "telepathy"
    before = api.keys_now()
    doc = problem(api.http.post("/workflows", json=body), 422)
    paths = {e["path"] for e in doc["errors"]}
    assert "definition.steps[1].depends_on[0]" in paths and "definition.steps[2].step_type" in paths
    yaml_doc = problem(api.http.post("/workflows", content=YAML.replace(b"type: wait_for_event", b"type: nap"),
                                     headers=YAML_TYPE), 422)
    assert any(e["path"].startswith("spec.steps[4]") for e in yaml_doc["errors"])
    assert api.keys_now() == before


@pytest.mark.parametrize(("content", "headers"), [
    (b'{"name": ', JSON_TYPE), (b"\xff\xfe", JSON_TYPE), (b"[1, 2]", JSON_TYPE), (b"", JSON_TYPE),
    (b"spec: [", YAML_TYPE), (b"- a list", YAML_TYPE), (b"a: &x 1\nb: *x", YAML_TYPE),
])
def test_malformed_bodies_are_400(api: Api, content: bytes, headers: dict[str, str]) -> None:
    for path in ("/workflows", "/workflows/validate"):
        problem(api.http.post(path, content=content, headers=headers), 400)
    assert api.keys_now() == set()


def test_other_content_types_are_415(api: Api) -> None:
    for media in ("text/plain", "application/xml", "application/x-www-form-urlencoded"):
        doc = problem(api.http.post("/workflows", content=SEED, headers={"content-type": media}), 415)
        assert media in doc["detail"]
    assert api.keys_now() == set()


def test_unknown_workflows_and_versions_are_404(api: Api) -> None:
    problem(api.http.get("/workflows/nobody"), 404)
    problem(api.http.get("/workflows/00000000-0000-0000-0000-000000000000"), 404)
    wid = api.http.post("/workflows", content=SEED, headers=JSON_TYPE).json()["id"]
    problem(api.http.get(f"/workflows/{wid}", params={"version": "9.9.9"}), 404)
    for method, path in (("PUT", "/workflows/nobody"), ("DELETE", "/workflows/nobody"),
                         ("GET", "/workflows/nobody/versions"), ("POST", "/workflows/nobody/versions"),
                         ("POST", "/workflows/nobody/validate"), ("GET", "/workflows/nobody/steps")):
        problem(api.http.request(method, path, json={"active": True} if method == "PUT" else seed()), 404)


def test_listing_pages_by_cursor_and_filters_by_name_and_active(api: Api) -> None:
    for i in range(5):
        assert api.http.post("/workflows", json=seed(name=f"wf-{i}")).status_code == 201
    api.http.delete("/workflows/wf-3")
    seen, cursor = [], None
    while True:
        page = api.http.get("/workflows", params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
        seen += [w["name"] for w in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"wf-{i}" for i in range(5)]
    assert [w["name"] for w in api.http.get("/workflows", params={"active": "false"}).json()["items"]] == ["wf-3"]
    assert len(api.http.get("/workflows", params={"active": "true"}).json()["items"]) == 4
    assert [w["name"] for w in api.http.get("/workflows", params={"name": "WF-1"}).json()["items"]] == ["wf-1"]
    problem(api.http.get("/workflows", params={"cursor": "%%%"}), 400)
    problem(api.http.get("/steps", params={"cursor": "not base64!"}), 400)
    problem(api.http.get("/workflows", params={"limit": 0}), 400)


def test_put_makes_a_changed_definition_a_new_version_and_keeps_the_old(api: Api) -> None:
    wid = api.http.post("/workflows", content=SEED, headers=JSON_TYPE).json()["id"]
    unchanged = api.http.put(f"/workflows/{wid}", json={k: v for k, v in seed().items() if k != "version"})
    assert unchanged.status_code == 200 and unchanged.json()["version"] == "1.0.0"
    body = seed(description="now with a longer timeout")
    del body["version"], body["name"]
    body["definition"]["steps"][2]["timeout"] = 7200000
    changed = api.http.put(f"/workflows/{wid}", json=body).json()
    assert (changed["version"], changed["latest_version"], changed["description"]) == (
        "1.0.1", "1.0.1", "now with a longer timeout")
    named = api.http.put(f"/workflows/{wid}", json={**body, "version": "2.0.0", "description": "two"}).json()
    assert named["version"] == "2.0.0"
    old = api.http.get(f"/workflows/{wid}", params={"version": "1.0.0"}).json()
    assert old["description"] == "Workflow for agent task execution process" and old["latest_version"] == "2.0.0"
    problem(api.http.put(f"/workflows/{wid}", json={**body, "version": "1.0.0"}), 409)
    mismatch = problem(api.http.put(f"/workflows/{wid}", json={**body, "name": "someone else"}), 422)
    assert mismatch["errors"][0]["path"] == "name"
    problem(api.http.put(f"/workflows/{wid}", json={"active": "yes"}), 422)
    problem(api.http.put(f"/workflows/{wid}", json={"description": "alone"}), 422)
    versions = api.http.get(f"/workflows/{wid}/versions").json()["versions"]
    assert [(v["version"], v["latest"]) for v in versions] == [("1.0.0", False), ("1.0.1", False), ("2.0.0", True)]


def test_next_version_names() -> None:
    assert [next_version(v) for v in ("1.0.0", "1.0.9", "v3", "2024-01-rc", "beta")] == [
        "1.0.1", "1.0.10", "v4", "2024-02-rc", "beta.1"]


def test_delete_deactivates_starts_are_refused_until_reactivated(api: Api) -> None:
    wid = api.http.post("/workflows", content=SEED, headers=JSON_TYPE).json()["id"]
    context = {"project_id": "p-1", "task_id": "t-1", "agent_id": "a-1"}
    assert api.engine(lambda c: c.start("Agent Task Execution", context, instance_id="before"))
    gone = api.http.delete(f"/workflows/{wid}")
    assert gone.status_code == 200 and gone.json()["active"] is False
    assert gone.json()["updated_at"] >= gone.json()["created_at"]

    async def refused(c: Client) -> str:
        with pytest.raises(Refused, match="deactivated"):
            await c.start("Agent Task Execution", context)
        return "refused"
    assert api.engine(refused) == "refused"
    assert api.engine(lambda c: c.definition("Agent Task Execution", "1.0.0")).name  # nothing deleted
    assert api.http.get(f"/workflows/{wid}").json()["active"] is False
    assert api.http.put(f"/workflows/{wid}", json={"active": True}).json()["active"] is True
    assert api.engine(lambda c: c.start("Agent Task Execution", context, instance_id="after")) == "after"


def test_versions_route_adds_versions_and_replays_identical_ones(api: Api) -> None:
    wid = api.http.post("/workflows", content=SEED, headers=JSON_TYPE).json()["id"]
    body = seed(version="1.1.0", description="v1.1")
    del body["name"]
    created = api.http.post(f"/workflows/{wid}/versions", json=body)
    assert created.status_code == 201 and created.json()["version"] == "1.1.0"
    assert api.http.post(f"/workflows/{wid}/versions", json=body).status_code == 200
    yaml_version = YAML.replace(b'version: "1.2.0"', b'version: "1.3.0"')
    problem(api.http.post(f"/workflows/{wid}/versions", content=yaml_version, headers=YAML_TYPE), 422)  # other name
    listed = api.http.get(f"/workflows/{wid}/versions").json()
    assert listed["workflow_id"] == wid and [v["version"] for v in listed["versions"]] == ["1.0.0", "1.1.0"]


def test_validate_reports_every_problem_and_stores_nothing(api: Api) -> None:
    ok = api.http.post("/workflows/validate", content=YAML, headers=YAML_TYPE).json()
    assert ok["valid"] is True and ok["errors"] == [] and "wait_for_verification" in ok["steps"]
    body = seed()
    body["definition"]["steps"][0]["retry_policy"]["max_attempts"] = -1
    body["definition"]["error_handlers"][0]["step"] = "nowhere"
    bad = api.http.post("/workflows/validate", json=body).json()
    assert bad["valid"] is False and len(bad["errors"]) >= 2
    assert all(e["path"].startswith("definition.") for e in bad["errors"])
    assert api.keys_now() == set()
    wid = api.http.post("/workflows", content=SEED, headers=JSON_TYPE).json()["id"]
    stored = api.http.post(f"/workflows/{wid}/validate")
    assert stored.status_code == 200 and stored.json()["valid"] is True and stored.json()["version"] == "1.0.0"
    clash = api.http.post(f"/workflows/{wid}/validate", json=seed(description="other")).json()
    assert clash["valid"] is False and [e["path"] for e in clash["errors"]] == ["version"]
    fresh = api.http.post(f"/workflows/{wid}/validate", json={"definition": seed()["definition"]}).json()
    assert fresh["valid"] is True and fresh["version"] == "1.0.1"
    assert api.http.get(f"/workflows/{wid}/versions").json()["versions"][-1]["version"] == "1.0.0"


def test_steps_by_id_and_name_and_a_shared_name(api: Api) -> None:
    agent = api.http.post("/workflows", content=SEED, headers=JSON_TYPE).json()
    user = api.http.post("/workflows", content=YAML, headers=YAML_TYPE).json()
    listed = api.http.get(f"/workflows/{agent['id']}/steps").json()
    assert [s["id"] for s in listed] == [s["id"] for s in agent["definition"]["steps"]]
    monitor = listed[2]
    assert (monitor["type"], monitor["event_type"], monitor["timeout_ms"]) == ("event_wait", "agent.task_completed",
                                                                              3600000)
    assert api.http.get(f"/steps/{monitor['id']}").json() == monitor
    assert api.http.get("/steps/execution_monitoring").json() == monitor
    problem(api.http.get("/steps/nothing_like_it"), 404)
    other = seed(name="Another Agent Task")
    assert api.http.post("/workflows", json=other).status_code == 201
    shared = problem(api.http.get("/steps/execution_monitoring"), 409)
    assert len(shared["errors"]) == 2
    narrowed = api.http.get("/steps/execution_monitoring", params={"workflow": agent["id"]}).json()
    assert narrowed == monitor
    every = api.http.get("/steps", params={"limit": 1000}).json()
    assert len(every["items"]) == 4 + 4 + len(user["definition"]["steps"]) + 2 and every["next_cursor"] is None
    pages, cursor = [], None
    while True:
        page = api.http.get("/steps", params={"limit": 3, **({"cursor": cursor} if cursor else {})}).json()
        pages += page["items"]
        if (cursor := page["next_cursor"]) is None:
            break
    assert pages == every["items"]
    waits = api.http.get("/steps", params={"type": "event_wait"}).json()["items"]
    assert {s["workflow"] for s in waits} == {"Agent Task Execution", "Another Agent Task", user["name"]}


def test_client_registration_keeps_times_and_the_id_index(api: Api) -> None:
    first, _ = api.engine(lambda c: c.register(SEED))
    wid = api.http.get("/workflows/Agent Task Execution").json()["id"]
    created = api.http.get(f"/workflows/{wid}").json()
    api.engine(lambda c: c.register(json.dumps(seed(version="1.5.0"))))
    later = api.http.get(f"/workflows/{wid}").json()
    assert later["version"] == "1.5.0" and later["created_at"] == created["created_at"]
    assert later["updated_at"] == later["version_created_at"] >= created["updated_at"]
    # A workflow stored before the id index existed still resolves by its id.
    api.engine(lambda c: c.redis.delete(c.keys.definition_ids))
    assert api.http.get(f"/workflows/{wid}").json()["name"] == first.name


def test_the_openapi_document_declares_json_and_yaml_bodies(api: Api) -> None:
    spec = api.http.get("/openapi.json").json()
    post = spec["paths"]["/workflows"]["post"]
    assert set(post["requestBody"]["content"]) == {"application/json", "application/yaml"}
    assert post["requestBody"]["content"]["application/json"]["schema"]["required"] == ["name", "version",
                                                                                         "definition"]
    assert {"200", "201", "400", "409", "415", "422"} <= set(post["responses"])
    assert "requestBody" in spec["paths"]["/workflows/{workflow_id}"]["put"]


def test_a_body_over_the_payload_limit_is_413_and_stores_nothing(fake_settings: Settings) -> None:
    settings = msgspec.structs.replace(fake_settings, max_payload_bytes=len(SEED) // 2)
    server = fakeredis.FakeServer()
    app = create_app(settings, ApiSettings(), redis_factory=lambda: fakeredis.FakeAsyncRedis(server=server))
    with TestClient(app) as http:
        for path in ("/workflows", "/workflows/validate"):
            for headers in (JSON_TYPE, YAML_TYPE):
                problem(http.post(path, content=SEED, headers=headers), 413)
        assert Api(http, server, settings).keys_now() == set()
