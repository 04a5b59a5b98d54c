"""`foldflow api` as a process: it serves health and the spec, obeys the bind
rule (no auth: loopback only; a non-loopback address without auth exits 2
unless --insecure-no-auth), and two API processes serve one deployment (a
definition posted to one is served by the other; an execution started through
one is read and controlled through the other)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest

from engine.dev.embedded import free_port
from tests.support.api_stack import ApiStack
from tests.support.tools import EXAMPLES, ROOT, foldflow_env

NO_AUTH = ("FOLDFLOW_JWT_SECRET", "JWT_SECRET", "FOLDFLOW_JWT_JWKS_URL", "FOLDFLOW_API_HOST")
SECRET = "process-test-" + "s" * 32
HANDSHAKE = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
             "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


def test_serves_health_and_spec(stack: ApiStack) -> None:
    assert httpx.get(stack.url + "/health/liveness").json()["status"] == "ok"
    assert httpx.get(stack.url + "/health/readiness").status_code == 200
    spec = httpx.get(stack.url + "/openapi.json").json()
    assert spec["openapi"].startswith("3.1")
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert httpx.get(stack.url + "/docs").status_code == 200


def run_api(redis_url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**foldflow_env(None, url=redis_url, drop=NO_AUTH), **env}
    return subprocess.run([sys.executable, "-m", "engine.ops.cli", "api", *args], env=full, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_refuses_open_non_loopback_bind(redis_url: str) -> None:
    done = run_api(redis_url, "--host", "0.0.0.0", "--port", "0")
    assert done.returncode == 2
    assert "refusing to serve 0.0.0.0 with no auth" in done.stderr
    assert "--insecure-no-auth" in done.stderr


def test_refuses_open_bind_from_the_environment_too(redis_url: str) -> None:
    done = run_api(redis_url, "--port", "0", FOLDFLOW_API_HOST="::")
    assert done.returncode == 2 and "refusing to serve :: with no auth" in done.stderr


def test_a_bad_setting_is_refused_before_serving(redis_url: str) -> None:
    done = run_api(redis_url, "--port", "0", FOLDFLOW_JWT_SECRET="x", FOLDFLOW_JWT_ALGORITHM="RS256")
    assert done.returncode != 0 and "FOLDFLOW_JWT_JWKS_URL" in done.stderr


def outside_address() -> str | None:
    """An address of this host that is not loopback, if it has one."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent for a UDP connect
        address: str = probe.getsockname()[0]
    except OSError:
        return None
    finally:
        probe.close()
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_default_binds_loopback_only(stack: ApiStack) -> None:
    address = outside_address()
    if address is None:
        pytest.skip("this host has no non-loopback address to probe")
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://{address}:{stack.ports[0]}/health/liveness", timeout=2)


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    return tmp_path


def test_insecure_no_auth_serves_every_address(redis_url: str, logs: Path) -> None:
    with ApiStack(redis_url, logs, workers=False, activities=None,
                  api_args=("--host", "0.0.0.0", "--insecure-no-auth")) as running:
        assert httpx.get(running.url + "/workflows").status_code == 200
        assert "no auth" in running.log("api0")


def test_with_a_secret_it_serves_every_address_behind_tokens(redis_url: str, logs: Path) -> None:
    with ApiStack(redis_url, logs, workers=False, activities=None, api_args=("--host", "0.0.0.0"),
                  env={"FOLDFLOW_JWT_SECRET": SECRET}) as running:
        assert httpx.get(running.url + "/workflows").status_code == 401
        good = jwt.encode({"scope": "read", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
        assert httpx.get(running.url + "/workflows", headers={"Authorization": f"Bearer {good}"}).status_code == 200
        assert httpx.get(running.url + "/health/readiness").status_code == 200
        # a WebSocket handshake without a token is answered 401 (a problem), not upgraded
        for token, status in ((None, 401), (jwt.encode({"scope": "", "exp": int(time.time()) + 60}, SECRET,
                                                       algorithm="HS256"), 403)):
            r = httpx.get(running.url + "/ws/workflow/nobody", params={"access_token": token} if token else None,
                          headers=HANDSHAKE)
            assert r.status_code == status, (r.status_code, r.text)
            assert r.headers["content-type"] == "application/problem+json"


# -- two API processes, one deployment ---------------------------------------

@pytest.fixture(scope="module")
def pair(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiStack]:
    with ApiStack(redis_url, tmp_path_factory.mktemp("pair"), apis=2) as running:
        yield running


def wait_status(url: str, execution_id: str, want: str, timeout: float = 20.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    doc: dict[str, object] = {}
    while time.monotonic() < deadline:
        r = httpx.get(f"{url}/executions/{execution_id}")
        if r.status_code == 200:
            doc = r.json()
            if doc.get("status") == want:
                return doc
        time.sleep(0.05)
    raise AssertionError(f"{execution_id} not {want} after {timeout}s: {doc}")


def test_two_processes_serve_one_deployment(pair: ApiStack) -> None:
    one, two = pair.urls
    assert one != two
    body = (EXAMPLES / "agent-task-execution.json").read_text()
    name = f"Two Process {uuid.uuid4().hex[:6]}"
    body = body.replace('"Agent Task Execution"', f'"{name}"', 1)
    created = httpx.post(one + "/workflows", content=body, headers={"content-type": "application/json"})
    assert created.status_code == 201, created.text
    workflow = created.json()
    served = httpx.get(f"{two}/workflows/{workflow['id']}")
    assert served.status_code == 200 and served.json()["name"] == name
    assert httpx.get(f"{two}/workflows/{name}").json()["id"] == workflow["id"]

    execution_id = f"two-{uuid.uuid4().hex[:8]}"
    context = {"project_id": "p-1", "task_id": "t-2p", "agent_id": "a-2p"}
    start = httpx.post(one + "/executions", json={"workflow_id": workflow["id"], "correlation_id": execution_id,
                                                  "context": context, "execution_id": execution_id})
    assert start.status_code in (200, 202), start.text
    assert start.json()["execution_id"] == execution_id
    # read through the other process, and steer it from there
    waiting = wait_status(two, execution_id, "running")
    assert waiting["execution_id"] == execution_id
    paused = httpx.put(f"{two}/executions/{execution_id}/pause")
    assert paused.status_code in (200, 202), paused.text
    wait_status(one, execution_id, "paused")
    assert httpx.put(f"{one}/executions/{execution_id}/resume").status_code in (200, 202)
    wait_status(two, execution_id, "running")
    assert httpx.put(f"{one}/executions/{execution_id}/cancel").status_code in (200, 202)
    wait_status(two, execution_id, "cancelled")
    refused = httpx.put(f"{two}/executions/{execution_id}/resume")
    assert refused.status_code == 409 and refused.headers["content-type"] == "application/problem+json"
    history = httpx.get(f"{two}/executions/{execution_id}/history").json()
    assert history


def test_each_process_counts_its_own_requests(pair: ApiStack) -> None:
    marker = f"/executions/count-{uuid.uuid4().hex[:6]}"
    httpx.get(pair.urls[1] + marker)
    text = [httpx.get(u + "/metrics").text for u in pair.urls]
    assert 'route="/executions/{execution_id}"' in text[1]
    assert marker not in text[0] + text[1]
    assert free_port() not in pair.ports
