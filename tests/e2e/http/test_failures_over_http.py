"""Every failure class of the HTTP executor, end to end: the engine's retries around
real calls, the error handlers, the health checks, the registry changing while the
executor runs, secrets, and a kill -9 of the executor in the middle of a call."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import uuid
from typing import Any

import httpx
import redis

from tests.e2e.http.conftest import SECRET, cli
from tests.support.api_stack import ApiStack
from tests.support.http_services import Seen, ServiceFarm
from tests.support.poll import wait_for


def _one_step(name: str, service: str, endpoint: str = "/do", *, attempts: int = 3, delay_ms: int = 50,
              **step: Any) -> dict[str, Any]:
    return {"name": name, "version": "1", "definition": {"steps": [{
        "name": "call", "step_type": "service_call", "service": service, "endpoint": endpoint,
        "retry_policy": {"max_attempts": attempts, "backoff_base": 1, "backoff_multiplier": delay_ms}, **step}]}}


def _run(api: httpx.Client, definition: dict[str, Any], context: dict[str, Any] | None = None) -> str:
    created = api.post("/workflows", json=definition)
    assert created.status_code == 201, created.text
    started = api.post("/executions", json={"workflow_id": definition["name"], "context": context or {}})
    assert started.status_code in (200, 202), started.text
    return str(started.json()["execution_id"])


def _final(api: httpx.Client, eid: str, timeout: float = 60) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        body: dict[str, Any] = api.get(f"/executions/{eid}").json()
        return body if body.get("status") in ("completed", "failed", "cancelled") else None

    return wait_for(done, timeout, f"execution {eid} finishes")  # type: ignore[no-any-return]


def _failures(api: httpx.Client, eid: str) -> list[dict[str, Any]]:
    history = api.get(f"/executions/{eid}/history").json()["events"]
    return [e for e in history if e["type"] == "workflow.step_failed"]


def _register(stack: ApiStack, name: str, *urls: str, extra: tuple[str, ...] = ()) -> None:
    done = cli(stack, "services", "register", name, *urls, *extra)
    assert done.returncode == 0, done.stdout + done.stderr


def _api(stack: ApiStack) -> httpx.Client:
    return httpx.Client(base_url=stack.url, timeout=30)


def test_503_twice_then_200_is_retried_honouring_retry_after(stack: ApiStack, farm: ServiceFarm) -> None:
    svc = farm.add("flaky-service")
    answers = iter([(503, {"busy": 1}, {"Retry-After": "1"}), (503, {"busy": 2}, {"Retry-After": "1"})])
    svc.route("POST", "/do", lambda s: next(answers, (200, {"done": True})))
    _register(stack, svc.name, svc.url)
    api = _api(stack)
    eid = _run(api, _one_step(f"flaky-{uuid.uuid4().hex[:6]}", svc.name))
    final = _final(api, eid)
    assert final["status"] == "completed"
    calls = svc.requests("POST", "/do")
    assert len(calls) == 3
    # backoff is 50 ms; Retry-After: 1 made each wait at least a second
    assert calls[1].at - calls[0].at >= 0.95 and calls[2].at - calls[1].at >= 0.95
    assert len({c.headers["Idempotency-Key"] for c in calls}) == 1, "retries of one run share the key"
    failures = _failures(api, eid)
    assert [f["data"]["error"]["status"] for f in failures] == [503, 503]


def test_404_is_not_retried_and_the_error_handler_runs(stack: ApiStack, farm: ServiceFarm) -> None:
    svc, alerts = farm.add("missing-service"), farm.add("alert-service")
    svc.route("POST", "/do", lambda s: (404, {"detail": "no such thing"}))
    alerts.route("POST", "/alerts/.*", lambda s: (200, {}))
    _register(stack, svc.name, svc.url)
    _register(stack, alerts.name, alerts.url)
    api = _api(stack)
    definition = _one_step(f"gone-{uuid.uuid4().hex[:6]}", svc.name)
    definition["definition"]["error_handlers"] = [
        {"step": "call", "on_error": {"action": "notify", "target": alerts.name, "endpoint": "/alerts/{project_id}"}}]
    eid = _run(api, definition, {"project_id": "p-9"})
    assert _final(api, eid)["status"] == "failed"
    assert len(svc.requests("POST", "/do")) == 1, "a 404 is not retried"
    note = wait_for(lambda: alerts.requests("POST", "/alerts/p-9"), 30, "the notify handler's call")[0]
    assert note.body["step"] == "call" and "HTTP 404" in note.body["error"]["message"]
    assert "no such thing" in note.body["error"]["message"]


def test_a_timeout_and_a_refused_connection_are_retried(stack: ApiStack, farm: ServiceFarm) -> None:
    slow = farm.add("slow-service")

    async def hang(seen: Seen) -> tuple[int, Any]:
        await asyncio.sleep(3)
        return 200, {}

    slow.route("POST", "/do", hang)
    down = farm.add("down-service")
    farm.stop(down.name)
    _register(stack, slow.name, slow.url)
    _register(stack, down.name, down.url)
    api = _api(stack)
    timed = _run(api, _one_step(f"slow-{uuid.uuid4().hex[:6]}", slow.name, attempts=2, timeout="300ms"))
    refused = _run(api, _one_step(f"down-{uuid.uuid4().hex[:6]}", down.name, attempts=2))
    # The executor's "no answer within 300 ms" or, on a loaded machine, the engine's own step
    # timeout "timed out after 300 ms" firing first: either way the 300 ms limit, each attempt.
    for eid, words in ((timed, "300 ms"), (refused, "cannot connect")):
        assert _final(api, eid)["status"] == "failed"
        failures = _failures(api, eid)
        assert len(failures) == 2 and all(words in f["data"]["error"]["message"] for f in failures), failures


def test_a_body_over_the_limit_fails_the_attempt_for_good(stack: ApiStack, farm: ServiceFarm) -> None:
    svc = farm.add("huge-service")
    svc.route("POST", "/do", lambda s: (200, b"x" * (2 * 1024 * 1024)))
    _register(stack, svc.name, svc.url)
    api = _api(stack)
    eid = _run(api, _one_step(f"huge-{uuid.uuid4().hex[:6]}", svc.name))
    assert _final(api, eid)["status"] == "failed"
    assert len(svc.requests("POST", "/do")) == 1
    assert "over the limit" in _failures(api, eid)[0]["data"]["error"]["message"]


def test_an_unhealthy_instance_is_skipped(stack: ApiStack, farm: ServiceFarm) -> None:
    good, sick = farm.add("pool-good"), farm.add("pool-sick")
    sick.health = lambda s: (500, {"status": "down"})
    for svc in (good, sick):
        svc.route("POST", "/do", lambda s: (200, {"ok": True}))
    _register(stack, "pool-service", good.url, sick.url,
              extra=("--interval", "1s", "--health-timeout", "500ms", "--failures", "1"))
    api = _api(stack)

    def sick_is_critical() -> bool:
        found = api.get("/services/pool-service").json()
        return any(i["url"] == sick.url and i["status"] == "critical" for i in found["instances"])

    wait_for(sick_is_critical, 30, "the sick instance's checks say critical")
    name = f"pool-{uuid.uuid4().hex[:6]}"
    api.post("/workflows", json=_one_step(name, "pool-service"))
    ids = [api.post("/executions", json={"workflow_id": name, "context": {}}).json()["execution_id"] for _ in range(6)]
    for eid in ids:
        assert _final(api, eid)["status"] == "completed"
    assert len(good.requests("POST", "/do")) == 6 and not sick.requests("POST", "/do")


def test_a_registration_is_picked_up_while_the_executor_runs(stack: ApiStack, farm: ServiceFarm) -> None:
    svc = farm.add("late-service")
    svc.route("POST", "/do", lambda s: (200, {"late": True}))
    api = _api(stack)
    eid = _run(api, _one_step(f"late-{uuid.uuid4().hex[:6]}", svc.name))
    time.sleep(1.0)  # the task waits on its queue: nothing resolves the service yet
    assert api.get(f"/executions/{eid}").json()["status"] == "running" and not svc.requests()
    stuck = cli(stack, "stuck", "--older-than", "0s")
    assert "no handler, no registered service, no LATE_SERVICE_URL" in stuck.stdout, stuck.stdout + stuck.stderr
    _register(stack, svc.name, svc.url)
    assert _final(api, eid)["status"] == "completed"


def test_secrets_reach_the_service_and_nothing_else(stack: ApiStack, farm: ServiceFarm, redis_url: str) -> None:
    svc = farm.add("secret-service")
    svc.route("POST", "/do/.*", lambda s: (200, {"echo": s.headers.get("Authorization"), "body": s.body}))
    _register(stack, svc.name, svc.url, extra=("--header", "Authorization=Bearer {{ secrets.api_token }}"))
    api = _api(stack)
    step = {"payload": {"token": "{{ secrets.api_token }}"}, "headers": {"X-Api-Key": "{{ secrets.api_token }}"}}
    eid = _run(api, _one_step(f"secret-{uuid.uuid4().hex[:6]}", svc.name, "/do/{{ secrets.api_token }}", **step))
    assert _final(api, eid)["status"] == "completed"
    seen = svc.requests("POST")[0]
    assert seen.headers["Authorization"] == f"Bearer {SECRET}" and seen.headers["X-Api-Key"] == SECRET
    assert seen.body == {"token": SECRET} and seen.path.endswith(SECRET)
    # every key of the deployment, whatever its type, and every log of the run
    client = redis.Redis.from_url(redis_url)
    found = []
    for key in client.scan_iter(match=f"*{stack.prefix}*", count=1000):
        kind = client.type(key).decode()
        dump = {"stream": lambda: client.xrange(key), "hash": lambda: client.hgetall(key),
                "string": lambda: client.get(key), "set": lambda: client.smembers(key),
                "zset": lambda: client.zrange(key, 0, -1), "list": lambda: client.lrange(key, 0, -1)}.get(kind)
        if dump is not None and SECRET.encode() in repr(dump()).encode():
            found.append(key)
    assert not found, f"the secret is stored in {found}"
    for log in stack.logs.glob("*.log"):
        assert SECRET not in log.read_text(errors="replace"), f"the secret is in {log.name}"


def test_kill_9_mid_call_calls_again_with_the_same_idempotency_key(stack: ApiStack, farm: ServiceFarm) -> None:
    svc = farm.add("held-service")
    first = threading.Event()

    async def hold_the_first(seen: Seen) -> tuple[int, Any]:
        if not first.is_set():
            first.set()
            await asyncio.sleep(30)  # the executor dies while waiting for this answer
        return 200, {"charged": True}

    svc.route("POST", "/do", hold_the_first)
    _register(stack, svc.name, svc.url)
    api = _api(stack)
    eid = _run(api, _one_step(f"held-{uuid.uuid4().hex[:6]}", svc.name, timeout="60s"))
    assert first.wait(30), "the call was never made"
    proc = stack.procs["http"]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    stack.start_http()
    assert _final(api, eid)["status"] == "completed"
    calls = svc.requests("POST", "/do")
    assert len(calls) == 2 and calls[0].headers["Idempotency-Key"] == calls[1].headers["Idempotency-Key"]
