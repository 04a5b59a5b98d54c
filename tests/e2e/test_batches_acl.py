"""Batch operations under the Redis ACL users of deploy/acl/users.acl: the API as
ff-api creates, reads and cancels batches, the runner `foldflow batches` as
ff-batches matches from the read models and sends the commands, next to the engine
worker (ff-engine) and the projector (ff-projector). Redis refuses none of it; and
the runner's user may not write history, read models or the partition count."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from engine.client import Client
from engine.config import Settings
from engine.dev.embedded import free_port
from engine.store.connection import connect
from tests.e2e.test_security import AclServer, _acl_entry, acl_server  # noqa: F401 - the module's ACL'd redis-server
from tests.support.poll import run, wait_for
from tests.support.tools import WORKER_KNOBS, foldflow_env, spawn

pytestmark = pytest.mark.redis
N = 20


def env(acl: AclServer, role: str) -> dict[str, str]:
    return foldflow_env(None, WORKER_KNOBS, url=acl.url(role), prefix="ff", partitions=8,
                        FOLDFLOW_HEARTBEAT_MS="500")


async def started(acl: AclServer) -> list[str]:
    client = Client(connect(acl.url("admin")), Settings(redis_url=acl.url("admin"), prefix="ff", partitions=8))
    try:
        await client.register({"name": "acl-batch", "version": "1", "steps": [
            {"name": "w", "type": "event_wait", "event_type": "never.sent", "filter": {"k": "v"}}]})
        return [await client.start("acl-batch", {}, instance_id=f"acl-b-{i}") for i in range(N)]
    finally:
        await client.close()


def test_batches_run_under_the_api_and_batches_users(acl_server: AclServer, tmp_path: Path) -> None:  # noqa: F811
    with acl_server.root() as r:
        r.flushall()
        r.execute_command("ACL", "LOG", "RESET")
    port = free_port()
    procs: list[subprocess.Popen[bytes]] = [
        spawn(["worker"], env(acl_server, "engine"), tmp_path / "worker.log"),
        spawn(["projector"], env(acl_server, "projector"), tmp_path / "projector.log"),
        spawn(["batches"], env(acl_server, "batches"), tmp_path / "batches.log"),
        spawn(["api", "--port", str(port)], env(acl_server, "api"), tmp_path / "api.log"),
    ]
    url = f"http://127.0.0.1:{port}"
    try:
        run(started(acl_server))
        wait_for(lambda: _get(url, "/executions", status="running", workflow="acl-batch"), 60, "all running",
                 ok=lambda page: page is not None and page["count"] == N, retry_on=(httpx.TransportError,))
        answer = httpx.post(url + "/batches", json={"operation": "terminate", "query": {"workflow": "acl-batch"}},
                            timeout=10)
        assert answer.status_code == 202, answer.text
        bid = answer.json()["batch_id"]
        view = wait_for(lambda: _get(url, f"/batches/{bid}"), 60, "the batch completed",
                        ok=lambda v: v is not None and v["state"] == "completed")
        assert (view["matched"], view["done"], view["failed"]) == (N, N, 0), view
        assert _get(url, f"/batches/{bid}/failures")["items"] == []
        assert httpx.post(f"{url}/batches/{bid}/cancel", timeout=10).status_code == 409
        wait_for(lambda: _get(url, "/executions", status="cancelled", workflow="acl-batch"), 30, "all cancelled",
                 ok=lambda page: page is not None and page["count"] == N)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
    with acl_server.root() as r:
        refused = [_acl_entry(e) for e in r.execute_command("ACL", "LOG", "128")]
    mine = [e for e in refused if e.get("username") in ("ff-api", "ff-batches")
            and not str(e.get("object", "")).startswith("config")]  # the preflight's CONFIG GET is expected
    assert mine == [], mine


def _get(url: str, path: str, **params: Any) -> Any:
    answer = httpx.get(url + path, params=params, timeout=10)
    return answer.json() if answer.status_code == 200 else None


def test_the_batches_user_may_do_its_job_and_no_more(acl_server: AclServer) -> None:  # noqa: F811
    runner = acl_server.sync("batches")
    assert runner.xadd("{ff:3}:inbox", {"type": "cancel", "id": "x", "data": "{}"})
    assert runner.xrange("{ff:3}:i:x") == []
    assert runner.hgetall("{ff:batch:0123}:rec") == {}
    assert runner.smembers("ff:batches:active") == set()
    refused = [
        lambda: runner.xadd("{ff:3}:i:x", {"type": "x"}),  # history is the engine's
        lambda: runner.hset("{ff:3}:x:i:x", "executions", "{}"),  # the read models are the projector's
        lambda: runner.hset("ff:meta", "partitions", "9"),
        lambda: runner.xadd("{ff:3}:tasks:extractor", {"x": "1"}),
        lambda: runner.execute_command("FLUSHALL"),  # type: ignore[no-untyped-call]
    ]
    for attempt in refused:
        with pytest.raises(redis.exceptions.NoPermissionError):
            attempt()  # type: ignore[no-untyped-call]
