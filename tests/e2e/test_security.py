"""Security: every role runs as its own Redis ACL user (deploy/acl/users.acl)
and can do its job and nothing more; TLS (``rediss://``) passes through; the
text fields a sender controls have bounded lengths (streams.md, "Security: ACL
users per role")."""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import signal
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import redis
import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

from engine.client import Client
from engine.config import Settings
from engine.core.codec import MAX_CMD_ID_CHARS, decode_command_entry
from engine.core.model import Task
from engine.dev.embedded import free_port
from engine.errors import InvalidInput, PoisonMessage, UnknownInstance
from engine.store.connection import connect
from engine.store.keys import Keys
from engine.store.services import ServiceRegistry
from engine.workers.activities import ActivityWorker, Registry
from engine.workers.engine import EngineWorker
from engine.workers.router import decode_event_fields
from projections.queries import Queries
from tests.support.helpers import check_history
from tests.support.http_services import ServiceFarm
from tests.support.poll import eventually, run, wait_for
from tests.support.tools import ROOT, WORKER_KNOBS, foldflow_env, missing, require_redis_server, require_tool, spawn

pytestmark = pytest.mark.redis

ACL_FILE = ROOT / "deploy" / "acl" / "users.acl"
ROLES = ("client", "engine", "activities", "projector", "reader", "api", "admin", "bridge", "batches")
ROOT_USER = "fftest-root"  # test-only superuser: reads ACL LOG, flushes; not part of users.acl


# -- a redis-server of our own (ACL file, TLS) --------------------------------------
def redis_binary() -> str:
    return require_redis_server("this test starts a redis-server with its own ACL file or TLS")


def server_version(binary: str) -> tuple[int, int]:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
    m = re.search(r"v=(\d+)\.(\d+)", out)
    assert m, out
    return int(m.group(1)), int(m.group(2))


def start_server(binary: str, args: list[str], workdir: Path, ready: Callable[[], bool],
                 timeout: float = 10.0) -> subprocess.Popen[bytes]:
    log_path = workdir / "redis.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([binary, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                 "--dir", str(workdir), *args], stdout=log, stderr=subprocess.STDOUT)
    def answers() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode}: {log_path.read_text()[-1500:]}")
        return ready()

    try:
        wait_for(answers, timeout, "redis-server answers", retry_on=(redis.exceptions.ConnectionError, OSError))
    except (AssertionError, redis.exceptions.ConnectionError, OSError) as exc:
        proc.kill()
        raise TimeoutError(f"redis-server did not answer: {log_path.read_text()[-1500:]}") from exc
    return proc


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def render_acl(passwords: dict[str, str], root_password: str, version: tuple[int, int]) -> str:
    """deploy/acl/users.acl with test passwords, plus a test superuser."""
    text = ACL_FILE.read_text()
    for role, password in passwords.items():
        marker = f">EXAMPLE-{role}-password-CHANGE-ME"
        assert marker in text, f"{ACL_FILE} has no user for role {role}"
        text = text.replace(marker, f">{password}")
    assert "EXAMPLE-" not in text, "a role of users.acl is not covered by this test"
    if version < (7, 2):
        # CLIENT SETINFO (sent by redis-py) exists from Redis 7.2; older servers refuse the
        # rule, and answer redis-py's SETINFO with an error that redis-py ignores.
        text = text.replace(" +client|setinfo", "")
    return text + f"user {ROOT_USER} on >{root_password} ~* &* +@all\n"


class AclServer:
    def __init__(self, port: int, passwords: dict[str, str], root_password: str) -> None:
        self.port = port
        self.passwords = passwords
        self.root_password = root_password

    def url(self, role: str) -> str:
        return f"redis://ff-{role}:{self.passwords[role]}@127.0.0.1:{self.port}/0"

    def sync(self, role: str) -> redis.Redis:
        return redis.Redis.from_url(self.url(role))

    def root(self) -> redis.Redis:
        return redis.Redis(port=self.port, username=ROOT_USER, password=self.root_password)


@pytest.fixture(scope="module")
def acl_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AclServer]:
    binary = redis_binary()
    workdir = tmp_path_factory.mktemp("acl-redis")
    passwords = {role: secrets.token_hex(12) for role in ROLES}
    root_password = secrets.token_hex(12)
    acl = workdir / "users.acl"
    acl.write_text(render_acl(passwords, root_password, server_version(binary)))
    port = free_port()
    server = AclServer(port, passwords, root_password)

    def ready() -> bool:
        with server.root() as r:
            return bool(r.ping())

    proc = start_server(binary, ["--port", str(port), "--aclfile", str(acl)], workdir, ready)
    try:
        yield server
    finally:
        stop_server(proc)


# -- 1. every role as its own user, end to end ---------------------------------------
def role_env(url: str, metrics_port: int) -> dict[str, str]:
    return foldflow_env(
        None, WORKER_KNOBS, url=url, prefix="ff", partitions=8,
        FOLDFLOW_SNAPSHOT_EVERY="5", FOLDFLOW_HEARTBEAT_MS="500",
        # breakers stay on (breaker.lua runs under the activity user) but never open here
        FOLDFLOW_BREAKER_THRESHOLD="100",
        FOLDFLOW_METRICS_PORT=str(metrics_port), FOLDFLOW_METRICS_HOST="127.0.0.1",
    )


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()
    except (urllib.error.URLError, OSError) as exc:
        return 0, str(exc)


def test_every_role_runs_as_its_own_acl_user(acl_server: AclServer, agent_example: bytes, tmp_path: Path) -> None:
    """Admin registers, engine / activity / projector processes run as their users, the test
    is the client (start, publish, status, history) and the reader (read models); Redis
    refuses nothing but the CONFIG GET the preflight is built to do without."""
    with acl_server.root() as r:
        r.flushall()
        r.execute_command("ACL", "LOG", "RESET")

    def refusals() -> list[dict[str, Any]]:
        with acl_server.root() as r:
            return [_acl_entry(e) for e in r.execute_command("ACL", "LOG", "128")]

    every_role_end_to_end(acl_server.url, agent_example, tmp_path, instances=8, tag="sec", refusals=refusals)
    # Nothing a role did was refused, except the preflight's CONFIG GET (it reads INFO instead).
    unexpected = [e for e in refusals() if not str(e.get("object", "")).startswith("config")]
    assert not unexpected, f"refused under the role users: {unexpected}"
    # The API runs no preflight: not even a CONFIG GET of it was refused.
    assert not [e for e in refusals() if e.get("username") == "ff-api"], refusals()


async def _call_over_http(url: Callable[[str], str], settings: Settings, tag: str) -> None:
    """A service registered by the admin, called by `activities --http` running as ff-activities."""
    with ServiceFarm() as farm:
        echo = farm.add("acl-echo").route("POST", "/echo", lambda seen: (200, {"echoed": seen.body}))
        admin = connect(url("admin"))
        try:
            await ServiceRegistry(admin, Keys(settings.prefix, settings.partitions)).register(
                {"name": "acl-echo", "instances": [echo.url], "health": {"interval_ms": 1000}})
        finally:
            await admin.aclose()
        admin_client = Client.from_url(url("admin"), settings)
        definition, _ = await admin_client.register({"name": f"{tag}-http", "version": "1", "steps": [
            {"name": "echo", "type": "service_call", "service": "acl-echo", "endpoint": "/echo",
             "payload": {"n": 1}}]})
        await admin_client.close()
        client = Client.from_url(url("client"), settings)
        iid = await client.start(definition.name, {}, instance_id=f"{tag}-http-1")
        final = await client.wait(iid, timeout=30)
        await client.close()
        assert final.status == "completed" and echo.requests("POST", "/echo")[0].body == {"n": 1}


def every_role_end_to_end(url: Callable[[str], str], agent_example: bytes, tmp_path: Path, instances: int,
                          tag: str, refusals: Callable[[], Any]) -> None:
    """The agent example with every role as its own user (``url(role)``): engine, activity worker
    and projector as processes; the test is the admin, the client (start, publish, status,
    history) and the reader (read models); then health, metrics and the operator verbs under
    those users, a clean SIGTERM, and the engine's housekeeping as the engine user. A `foldflow api`
    process runs as its user too, driven over HTTP (_drive_api)."""
    settings = Settings(redis_url=url("client"), prefix="ff", partitions=8, block_ms=50)
    ports = {role: free_port() for role in ("engine", "activities", "projector", "http")}
    api_port = free_port()
    procs: dict[str, subprocess.Popen[bytes]] = {}

    def logs() -> str:
        return "\n".join(f"--- {n}\n{(tmp_path / f'{n}.log').read_text()[-2000:]}" for n in procs)

    async def scenario() -> None:
        admin = Client.from_url(url("admin"), settings)
        definition, _ = await admin.register(agent_example)
        await admin.close()
        procs["engine"] = spawn(["worker"], role_env(url("engine"), ports["engine"]), tmp_path / "engine.log")
        procs["activities"] = spawn(["activities", "--module", "engine.dev.demo_handlers"],
                                    role_env(url("activities"), ports["activities"]), tmp_path / "activities.log")
        procs["projector"] = spawn(["projector", "--trim-every", "0.5"],
                                   role_env(url("projector"), ports["projector"]), tmp_path / "projector.log")
        # The HTTP executor as the activity user: the registry, health checks and a real call.
        procs["http"] = spawn(["activities", "--http"], {**role_env(url("activities"), ports["http"]),
                                                         "FOLDFLOW_HTTP_REFRESH_MS": "200"}, tmp_path / "http.log")
        procs["api"] = spawn(["api", "--port", str(api_port)],
                             {**role_env(url("api"), 0), "FOLDFLOW_API_HEARTBEAT_S": "0.5"}, tmp_path / "api.log")
        client = Client.from_url(url("client"), settings)
        ids = []
        for i in range(instances):
            ctx = {"project_id": "p", "task_id": f"t-{i}", "agent_id": f"a-{i}", "flaky": i % 4 == 0}
            ids.append(await client.start(definition.name, ctx, instance_id=f"{tag}-{i}", correlation_id=f"{tag}-corr"))
        waiter = asyncio.create_task(client.wait(ids[0], timeout=40))  # XREAD BLOCK on an instance stream
        # The agent: a client that watches status and publishes the event each wait asks for.
        published: set[tuple[str, str, int]] = set()
        done: set[str] = set()
        async def answer_waits() -> bool:  # one round of the agent; True once every instance completed
            dead = [n for n, proc in procs.items() if proc.poll() is not None]
            assert not dead, f"{dead} exited (a command its user may not run?)\n{logs()}\n{refusals()}"
            for iid in ids:
                if iid in done:
                    continue
                try:
                    status = await client.status(iid)
                except UnknownInstance:
                    continue  # its start is not decided yet
                assert status["status"] in ("created", "running", "completed"), status
                if status["status"] == "completed":
                    done.add(iid)
                for step, item in status["steps"].items():
                    wait = item.get("waiting_for")
                    if wait and (iid, step, item["attempt"]) not in published:
                        published.add((iid, step, item["attempt"]))
                        await client.publish(wait["event_type"], {**wait["filter"], "result": "done"},
                                             correlation_id=f"{tag}-corr")
            return len(done) >= instances

        try:
            await eventually(answer_waits, 40, "every instance completes")
        except AssertionError as exc:
            raise AssertionError(f"{len(done)}/{instances} completed\n{logs()}") from exc
        assert (await waiter).status == "completed"
        for iid in ids:
            check_history(await client.history(iid))
        assert (await client.status(ids[0]))["steps"]["agent_assignment"]["attempt"] == 2  # a retry timer fired
        await client.close()

        reader = Queries.from_url(url("reader"), settings)

        async def projected() -> Any:
            page = await reader.executions(status="completed", workflow=definition.name, limit=100)
            return page if page["count"] == instances else None

        page = await eventually(projected)
        assert sorted(x["id"] for x in page["items"]) == sorted(ids)
        assert (await reader.lifecycle(ids[0]))[-1]["type"] == "workflow.completed"

        async def correlated() -> Any:
            found = await reader.correlation(f"{tag}-corr")
            return found if len(found["executions"]) == instances and len(found["events"]) == instances else None

        await eventually(correlated)
        await reader.close()

        await _drive_api(f"http://127.0.0.1:{api_port}", tag, procs["api"], logs, refusals)
        await _call_over_http(url, settings, tag)

        # Health and metrics of every role work under its user (readiness: scripts loaded,
        # groups exist; /metrics refreshes every Redis gauge, foldflow_redis_up says it did).
        for role, port in ports.items():
            async def ready(port: int = port) -> bool:
                return (await asyncio.to_thread(http_get, port, "/health/readiness"))[0] == 200

            await eventually(ready, timeout=10)
            code, body = await asyncio.to_thread(http_get, port, "/metrics")
            up = re.findall(r"^foldflow_redis_up(?:\{[^}]*\})? (\S+)$", body, re.M)
            assert code == 200 and up == ["1.0"], (role, code, up, refusals())
            code, body = await asyncio.to_thread(http_get, port, "/health/dependencies")
            assert code == 200, (role, body)

    try:
        run(scenario())
        # Admin's operator verbs run as the admin user.
        admin_env = role_env(url("admin"), 0)
        for verb in (["dlq", "list"], ["projector", "status"], ["stuck", "--older-than", "1ms", "--deep"],
                     ["top", "--once"], ["health", "dependencies", "--direct"]):
            done = subprocess.run([sys.executable, "-m", "engine.ops.cli", *verb], env=admin_env, cwd=ROOT,
                                  capture_output=True, text=True, timeout=30)
            assert done.returncode == 0, (verb, done.stdout[-1000:], done.stderr[-2000:])
        for name, proc in procs.items():
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0, f"{name} did not stop cleanly\n{logs()}"
        # The engine's housekeeping runs every few seconds, past this test's end: run it
        # once now as the engine user (trim acknowledged inbox entries, retire finished instances).
        assert max(run(_housekeeping(url("engine"), settings))) <= 1
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


API_DEFINITION = {"name": "api-approval", "version": "1.0.0", "definition": {"steps": [
    {"name": "approval", "step_type": "event_wait", "event_type": "api.approved",
     "event_filter": {"ticket": "${context.ticket}"}, "timeout": 60000}]}}


async def _drive_api(base: str, tag: str, proc: subprocess.Popen[bytes], logs: Callable[[], str],
                     refusals: Callable[[], Any]) -> None:
    """Every kind of Redis access the API's routes make, as the api user: register (EVALSHA of
    register_definition.lua, ff:defs, ff:defids, ff:evshapes), deactivate and reactivate, start
    (XADD to an inbox, XREAD BLOCK on the instance stream), publish with an id (publish_event.lua),
    folds (snapshot and instance stream), read models, the live streams (instance stream, feeds)
    and health."""
    iid, cid, event_id = f"{tag}-api-1", f"{tag}-api-corr", f"{tag}-api-evt-1"

    def ok(resp: httpx.Response, *codes: int) -> Any:
        assert resp.status_code in (codes or (200,)), (resp.request.method, str(resp.request.url),
                                                        resp.status_code, resp.text[:1000], refusals())
        return resp.json() if resp.headers.get("content-type", "").startswith(("application/json",
                                                                                "application/problem")) else None

    async with httpx.AsyncClient(base_url=base, timeout=15) as http:
        async def serving() -> bool:
            assert proc.poll() is None, f"foldflow api exited\n{logs()}"
            try:
                return (await http.get("/health/readiness")).status_code == 200
            except httpx.TransportError:
                return False

        await eventually(serving, timeout=30)
        workflow = ok(await http.post("/workflows", json=API_DEFINITION), 201)
        wid = workflow["id"]
        assert any(w["id"] == wid for w in ok(await http.get("/workflows"))["items"])
        assert ok(await http.delete(f"/workflows/{wid}"))["active"] is False
        start = {"workflow_id": wid, "correlation_id": cid, "context": {"ticket": "t-1"}, "execution_id": iid}
        ok(await http.post("/executions", json=start), 409)  # deactivated: nothing sent
        # by name: SISMEMBER of ff:defs (by id: HGET of ff:defids)
        assert ok(await http.put(f"/workflows/{API_DEFINITION['name']}", json={"active": True}))["active"] is True
        ok(await http.post("/executions", json=start), 200, 202)
        event = {"id": event_id, "type": "api.approved", "data": {"ticket": "t-1"}, "correlation_id": cid}
        assert ok(await http.post("/events", json=event), 202)["duplicate"] is False
        assert ok(await http.post("/events", json=event), 202)["duplicate"] is True
        assert ok(await http.get(f"/events/{event_id}"))["type"] == "api.approved"
        assert any(e["id"] == event_id for e in ok(await http.get("/events"))["items"])

        async def completed() -> bool:
            return bool(ok(await http.get(f"/executions/{iid}"))["status"] == "completed")

        await eventually(completed, timeout=20)
        assert ok(await http.get(f"/executions/{iid}/history"))["events"]
        ok(await http.get(f"/executions/{iid}/steps"))

        async def listed() -> bool:
            return bool(ok(await http.get("/executions", params={"workflow": wid}))["count"] == 1)

        await eventually(listed, timeout=20)

        async def correlated() -> bool:
            resp = await http.get(f"/correlations/{cid}/events")
            if resp.status_code == 404:
                return False  # not projected yet
            types = {e["type"] for e in ok(resp)["events"]}
            return {"api.approved", "workflow.completed"} <= types

        await eventually(correlated, timeout=20)
        stream = await http.get(f"/executions/{iid}/stream", params={"follow": "false"})
        assert stream.status_code == 200 and "event: close" in stream.text, (stream.status_code, stream.text[-500:])
        # The events stream never ends: read up to its first heartbeat (its feed XREAD is parked by then).
        async with http.stream("GET", "/events/stream") as live:
            assert live.status_code == 200
            async for chunk in live.aiter_text():
                if "heartbeat" in chunk:
                    break
        assert ok(await http.get("/health/dependencies"))["dependencies"]["redis"]["status"] == "ok"


async def _housekeeping(url: str, settings: Settings) -> list[int]:
    """Retire finished instances and trim acknowledged inbox entries as this user; each
    inbox's length after (the worker may have trimmed some itself: it does every 10 s,
    and the last delivered entry stays)."""
    worker = EngineWorker(connect(url), msgspec.structs.replace(settings, redis_url=url, retention_ms=1))
    try:
        worker.leases.owned = set(range(settings.partitions))
        await worker.trim()
        retired = await worker.retire()
        assert retired > 0
        keys = Keys(settings.prefix, settings.partitions)
        return [int(await worker.redis.xlen(keys.inbox(p))) for p in range(settings.partitions)]
    finally:
        await worker.redis.aclose()


def _acl_entry(raw: Any) -> dict[str, Any]:
    items = list(raw.items()) if isinstance(raw, dict) else list(zip(raw[0::2], raw[1::2]))
    return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v) for k, v in items}


# -- 2. what each role may not do ---------------------------------------------------------
def _refused(fn: Callable[[], Any]) -> str:
    """The error of a call Redis must refuse (NOPERM, or a script's refused command)."""
    with pytest.raises(ResponseError) as info:
        fn()
    message = str(info.value)
    assert isinstance(info.value, NoPermissionError) or "can't" in message or "NOPERM" in message, message
    return message


XADD_SCRIPT = "return redis.call('XADD', KEYS[1], '*', 'type', 'forged', 'data', '{}')"


def test_no_anonymous_access(acl_server: AclServer) -> None:
    with redis.Redis(port=acl_server.port) as anonymous:
        with pytest.raises(AuthenticationError):
            anonymous.ping()


def test_client_may_only_append_commands_publish_and_read(acl_server: AclServer, agent_example: bytes) -> None:
    r = acl_server.sync("client")
    try:
        _refused(lambda: r.xadd("{ff:0}:tasks:planning-system", {"task_id": "x"}))  # no task forging
        _refused(lambda: r.xadd("{ff:0}:i:victim", {"type": "workflow.completed"}))  # no history forging
        _refused(lambda: r.xadd("{ff:0}:feed", {"type": "workflow.completed"}))
        _refused(lambda: r.xrange("{ff:0}:inbox"))  # other senders' commands stay unread
        _refused(lambda: r.hset("ff:def:evil", "v:1", "{}"))
        _refused(lambda: r.hset("ff:meta", "partitions", "3"))
        _refused(lambda: r.eval("return 1", 0))
        _refused(lambda: r.config_get("*"))
        _refused(lambda: r.config_set("appendonly", "no"))
        _refused(lambda: r.flushall())
        _refused(lambda: r.flushdb())
        _refused(lambda: r.keys("*"))
        _refused(lambda: r.execute_command("ACL", "LIST"))  # type: ignore[no-untyped-call]
        _refused(lambda: r.execute_command("CLIENT", "LIST"))  # type: ignore[no-untyped-call]
    finally:
        r.close()

    async def register() -> None:
        client = Client.from_url(acl_server.url("client"), Settings(prefix="ff", partitions=8))
        try:
            with pytest.raises(NoPermissionError):
                await client.register(agent_example)  # register_definition.lua: the client may not
        finally:
            await client.close()

    run(register())


def test_activity_worker_cannot_write_history_or_touch_the_engines_inbox(acl_server: AclServer) -> None:
    r = acl_server.sync("activities")
    try:
        _refused(lambda: r.xadd("{ff:0}:i:victim", {"type": "workflow.completed"}))
        _refused(lambda: r.eval(XADD_SCRIPT, 1, "{ff:0}:i:victim"))  # nor through a script
        _refused(lambda: r.eval(XADD_SCRIPT, 1, "{ff:0}:feed"))
        # The inbox takes its results (XADD, as any service), but the engine's group is not its own:
        _refused(lambda: r.xack("{ff:0}:inbox", "engine", "0-1"))
        _refused(lambda: r.xdel("{ff:0}:inbox", "0-1"))
        _refused(lambda: r.xreadgroup("engine", "thief", {"{ff:0}:inbox": ">"}))
        _refused(lambda: r.eval("return redis.call('XACK', KEYS[1], 'engine', '0-1')", 1, "{ff:0}:inbox"))
        _refused(lambda: r.xadd("{ff:0}:tasks:planning-system", {"task_id": "x"}))  # no task forging
        _refused(lambda: r.hset("ff:meta", "partitions", "3"))
        _refused(lambda: r.hset("ff:def:evil", "v:1", "{}"))
        _refused(lambda: r.config_get("*"))
        _refused(lambda: r.flushall())
    finally:
        r.close()


def test_projector_cannot_write_an_inbox_or_forge_events(acl_server: AclServer) -> None:
    r = acl_server.sync("projector")
    try:
        _refused(lambda: r.xadd("{ff:0}:inbox", {"type": "cancel", "id": "x", "data": "{}"}))
        _refused(lambda: r.eval(XADD_SCRIPT, 1, "{ff:0}:inbox"))
        _refused(lambda: r.xadd("{ff:0}:feed", {"type": "workflow.completed"}))
        _refused(lambda: r.eval(XADD_SCRIPT, 1, "{ff:0}:feed"))  # keys allowed, XADD on them not
        _refused(lambda: r.xadd("ff:events", {"type": "agent.task_completed", "data": "{}"}))
        _refused(lambda: r.xadd("{ff:0}:i:victim", {"type": "workflow.completed"}))
        _refused(lambda: r.hset("ff:def:evil", "v:1", "{}"))
        _refused(lambda: r.config_get("*"))
        _refused(lambda: r.flushall())
    finally:
        r.close()


def test_engine_reader_and_admin_limits(acl_server: AclServer) -> None:
    engine = acl_server.sync("engine")
    reader = acl_server.sync("reader")
    admin = acl_server.sync("admin")
    try:
        _refused(lambda: engine.hset("ff:def:evil", "v:1", "{}"))  # definitions are the admin's
        _refused(lambda: engine.eval("return redis.call('HSET', KEYS[1], 'v:1', '{}')", 1, "ff:def:evil"))
        _refused(lambda: engine.hset("{ff:0}:x:i:victim", "executions", "{}"))  # read models are the projector's
        _refused(lambda: engine.hset("ff:meta", "partitions", "3"))
        for r in (engine, admin):
            _refused(lambda: r.config_get("*"))
            _refused(lambda: r.flushall())
            _refused(lambda: r.keys("*"))
            _refused(lambda: r.execute_command("ACL", "SETUSER", "ff-admin", "+@all"))  # type: ignore[no-untyped-call]
            _refused(lambda: r.execute_command("CLIENT", "KILL", "USER", "ff-client"))  # type: ignore[no-untyped-call]
        _refused(lambda: admin.set("other-app:key", "1"))  # only foldflow's keys
        assert admin.hset("ff:def:admin-check", "probe", "1") == 1
        admin.delete("ff:def:admin-check")
        _refused(lambda: reader.xrange("{ff:0}:i:victim"))
        _refused(lambda: reader.hset("{ff:0}:x:i:victim", "executions", "{}"))
    finally:
        for r in (engine, reader, admin):
            r.close()


def test_api_loads_its_scripts_again_after_a_flush(acl_server: AclServer, tmp_path: Path) -> None:
    """The end-to-end run finds the scripts loaded (the engine worker loads them all). After a
    SCRIPT FLUSH (a restart, a failover) the API's first EVALSHA of register_definition.lua and of
    publish_event.lua answers NOSCRIPT: it loads the script and runs that call with EVAL, as its user."""
    with acl_server.root() as r:
        r.script_flush()
        r.execute_command("ACL", "LOG", "RESET")
    port = free_port()
    proc = spawn(["api", "--port", str(port)], role_env(acl_server.url("api"), 0), tmp_path / "api.log")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=15) as http:
            def serving() -> bool:
                assert proc.poll() is None, (tmp_path / "api.log").read_text()[-3000:]
                try:
                    return http.get("/health/readiness").status_code == 200
                except httpx.TransportError:
                    return False

            wait_for(serving, 30, "foldflow api answers")
            doc = {**API_DEFINITION, "name": "api-after-flush"}
            resp = http.post("/workflows", json=doc)
            assert resp.status_code == 201, resp.text
            event = {"id": "after-flush-1", "type": "api.approved", "data": {"ticket": "t-9"}}
            resp = http.post("/events", json=event)
            assert resp.status_code == 202 and resp.json()["duplicate"] is False, resp.text
    finally:
        proc.terminate()
        proc.wait(30)
    with acl_server.root() as r:
        shas = [hashlib.sha1((ROOT / "engine" / "store" / "scripts" / f"{n}.lua").read_bytes()).hexdigest()
                for n in ("register_definition", "publish_event")]
        assert r.script_exists(*shas) == [True, True]
        refused = [_acl_entry(e) for e in r.execute_command("ACL", "LOG", "128")]
    assert not refused, refused


def test_api_may_serve_its_routes_and_nothing_more(acl_server: AclServer) -> None:
    """The API sends commands and events, registers and (de)activates definitions, and reads
    instance streams, snapshots, feeds and read models; the rest of the data is not its to change."""
    r = acl_server.sync("api")
    try:
        _refused(lambda: r.flushall())
        _refused(lambda: r.flushdb())
        _refused(lambda: r.config_set("appendonly", "no"))
        _refused(lambda: r.config_get("*"))
        _refused(lambda: r.keys("*"))
        _refused(lambda: r.script_flush())
        _refused(lambda: r.execute_command("ACL", "LIST"))  # type: ignore[no-untyped-call]
        _refused(lambda: r.execute_command("CLIENT", "LIST"))  # type: ignore[no-untyped-call]
        _refused(lambda: r.xgroup_destroy("{ff:0}:inbox", "engine"))  # no consumer group is its own
        _refused(lambda: r.xgroup_destroy("{ff:0}:feed", "proj:executions"))
        _refused(lambda: r.xgroup_destroy("ff:events", "router"))
        _refused(lambda: r.xack("ff:events", "router", "0-1"))
        _refused(lambda: r.delete("{ff:0}:i:victim"))  # instance streams are read only
        _refused(lambda: r.xtrim("{ff:0}:i:victim", maxlen=0))
        _refused(lambda: r.xadd("{ff:0}:i:victim", {"type": "workflow.completed"}))  # no history forging
        _refused(lambda: r.eval(XADD_SCRIPT, 1, "{ff:0}:i:victim"))  # nor through a script
        _refused(lambda: r.eval(XADD_SCRIPT, 1, "ff:def:evil"))  # a script's keys allowed, XADD on them not
        _refused(lambda: r.xadd("{ff:0}:feed", {"type": "workflow.completed"}))
        _refused(lambda: r.xadd("{ff:0}:tasks:planning-system", {"task_id": "x"}))  # no task forging
        _refused(lambda: r.xrange("{ff:0}:inbox"))  # other senders' commands stay unread
        _refused(lambda: r.xreadgroup("engine", "thief", {"{ff:0}:inbox": ">"}))
        _refused(lambda: r.hset("{ff:0}:x:i:victim", "executions", "{}"))  # read models are the projector's
        _refused(lambda: r.hset("{ff:0}:snap:victim", "state", "{}"))  # snapshots the engine's
        _refused(lambda: r.set("{ff:0}:lease", "thief"))
        _refused(lambda: r.hset("ff:meta", "partitions", "3"))
        _refused(lambda: r.delete("ff:def:victim"))  # definitions are deactivated, never deleted
        _refused(lambda: r.hdel("ff:def:victim", "v:1.0.0"))
        _refused(lambda: r.srem("ff:defs", "victim"))
        _refused(lambda: r.smembers("ff:evshapes:api.approved"))  # write only: the router's to read
        _refused(lambda: r.set("other-app:key", "1"))  # only foldflow's keys
    finally:
        r.close()


# -- 3. TLS ---------------------------------------------------------------------------------
EC_NEW_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_certificates(d: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it."""
    _openssl("req", "-x509", "-new", *EC_NEW_KEY, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
             "-subj", "/CN=foldflow test CA", cwd=d)
    _openssl("req", "-new", *EC_NEW_KEY, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1",
             cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.pem", "-days", "1", "-extfile", "san.ext", cwd=d)
    return d / "ca.pem", d / "server.pem", d / "server.key"


def make_client_certificate(ca_dir: Path, out: Path, name: str = "client") -> tuple[Path, Path]:
    """A client certificate (mutual TLS) and its key, in ``out``, signed by the CA that
    make_certificates left in ``ca_dir``."""
    out.mkdir(parents=True, exist_ok=True)
    key, csr, cert, ext = (out / f"{name}.{suffix}" for suffix in ("key", "csr", "pem", "ext"))
    _openssl("req", "-new", *EC_NEW_KEY, "-keyout", str(key), "-out", str(csr), "-subj", f"/CN=foldflow test {name}",
             cwd=ca_dir)
    ext.write_text("extendedKeyUsage=clientAuth\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", str(cert), "-days", "1", "-extfile", str(ext), cwd=ca_dir)
    return cert, key


def start_tls_server(binary: str, port: int, certificates: tuple[Path, Path, Path], auth_clients: str,
                     workdir: Path, ready: Callable[[], bool]) -> subprocess.Popen[bytes]:
    """A TLS-only redis-server (``--tls-auth-clients`` yes: client certificates required); skips
    when this redis-server is built without TLS."""
    ca, cert, key = certificates
    try:
        return start_server(binary, ["--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert),
                                     "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
                                     "--tls-auth-clients", auth_clients], workdir, ready)
    except RuntimeError as exc:
        if "tls" in str(exc).lower() and ("bad directive" in str(exc).lower() or "not supported" in str(exc).lower()):
            missing(f"this redis-server is built without TLS: {exc}")
        raise


def test_tls_passes_through(tmp_path: Path, prefix: str) -> None:
    binary = redis_binary()
    require_tool("openssl", "it makes the throwaway certificates")
    certificates = make_certificates(tmp_path)
    port = free_port()
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={urllib.parse.quote(str(certificates[0]))}"

    def ready() -> bool:
        with redis.Redis.from_url(url) as r:
            return bool(r.ping())

    proc = start_tls_server(binary, port, certificates, "no", tmp_path, ready)
    try:
        with redis.Redis(port=port, socket_timeout=2) as plain:  # plaintext is not spoken there
            with pytest.raises((redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
                plain.ping()
        run(_tls_workflow(url, prefix))
    finally:
        stop_server(proc)


def test_mutual_tls(tmp_path: Path, prefix: str) -> None:
    """``--tls-auth-clients yes``: Redis takes only clients with a certificate from its CA. The
    ``ssl_certfile`` / ``ssl_keyfile`` query parameters of the URL (redis-py's from_url passes
    them on, engine.store.connection.connect adds nothing) are all a role needs, in process and as a
    ``foldflow worker`` process given nothing but REDIS_URL."""
    binary = redis_binary()
    require_tool("openssl", "it makes the throwaway certificates")
    certificates = make_certificates(tmp_path)
    ca = certificates[0]
    # A directory name with what breaks an unquoted query string (' ', '+', '&', '='): the paths are URL-quoted.
    cert, key = make_client_certificate(tmp_path, tmp_path / "client certs+keys & c=1")
    rogue_ca_dir = tmp_path / "rogue-ca"
    rogue_ca_dir.mkdir()
    make_certificates(rogue_ca_dir)  # another CA, unknown to the server
    rogue_cert, rogue_key = make_client_certificate(rogue_ca_dir, rogue_ca_dir)
    port = free_port()

    def quoted(path: Path) -> str:
        return urllib.parse.quote(str(path))

    no_cert_url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={quoted(ca)}"  # trusts the server; shows no certificate
    url = f"{no_cert_url}&ssl_certfile={quoted(cert)}&ssl_keyfile={quoted(key)}"
    rogue_url = f"{no_cert_url}&ssl_certfile={quoted(rogue_cert)}&ssl_keyfile={quoted(rogue_key)}"
    server_log = tmp_path / "redis.log"

    def ready() -> bool:
        with redis.Redis.from_url(url) as r:
            return bool(r.ping())

    async def refused(bad_url: str, server_says: str) -> None:
        r = connect(bad_url)
        try:
            with pytest.raises(redis.exceptions.ConnectionError) as info:
                await r.ping()
        finally:
            await r.aclose()
        # Precisely redis.exceptions.ConnectionError (not its AuthenticationError subclass, not a timeout),
        # raised reading the first reply: under TLS 1.3 the server checks the client's certificate after
        # the client's side of the handshake, so the refusal arrives as an alert (an ssl.SSLError such as
        # TLSV13_ALERT_CERTIFICATE_REQUIRED) or, racing the close, as an EOF: an OSError either way.
        assert type(info.value) is redis.exceptions.ConnectionError, repr(info.value)
        assert isinstance(info.value.__context__, OSError), repr(info.value.__context__)

        async def logged() -> bool:  # the server's own reason for the refusal
            return server_says in server_log.read_text()

        await eventually(logged, timeout=5)

    proc = start_tls_server(binary, port, certificates, "yes", tmp_path, ready)
    engine_proc: subprocess.Popen[bytes] | None = None
    try:
        async def in_process() -> None:
            r = connect(url)
            kwargs = r.connection_pool.connection_kwargs
            assert (kwargs["ssl_certfile"], kwargs["ssl_keyfile"]) == (str(cert), str(key)), kwargs
            await r.aclose()
            await refused(no_cert_url, "peer did not return a certificate")
            await refused(rogue_url, "certificate verify failed")
            await _tls_workflow(url, prefix)  # engine worker, activity worker and client: the URL alone

        run(in_process())

        # The CLI path: `foldflow worker` with REDIS_URL set to the same URL is the engine here.
        cli_prefix = f"{prefix}cli"
        metrics_port = free_port()
        engine_log = tmp_path / "engine.log"
        env = {**role_env(url, metrics_port), "FOLDFLOW_PREFIX": cli_prefix, "FOLDFLOW_PARTITIONS": "2"}
        engine_proc = spawn(["worker"], env, engine_log)

        async def through_the_cli() -> None:
            async def serving() -> bool:
                assert engine_proc is not None and engine_proc.poll() is None, \
                    f"foldflow worker exited\n{engine_log.read_text()[-3000:]}"
                return (await asyncio.to_thread(http_get, metrics_port, "/health/readiness"))[0] == 200

            await eventually(serving, timeout=15)
            await _tls_workflow(url, cli_prefix, engine=False)

        run(through_the_cli())
        engine_proc.send_signal(signal.SIGTERM)
        assert engine_proc.wait(15) == 0, f"foldflow worker did not stop cleanly\n{engine_log.read_text()[-3000:]}"
    finally:
        if engine_proc is not None and engine_proc.poll() is None:
            engine_proc.kill()
            engine_proc.wait()
        stop_server(proc)


async def _tls_workflow(url: str, prefix: str, *, engine: bool = True) -> None:
    """Register, start three instances and see them complete; ``engine=False``: an engine
    worker runs elsewhere (a process of its own)."""
    settings = Settings(redis_url=url, prefix=prefix, partitions=2, block_ms=50, timer_poll_ms=20,
                        claim_idle_ms=1_000, breaker_threshold=0)
    registry = Registry()

    @registry.handler("tls-svc")
    def handle(task: Task) -> dict[str, Any]:
        return {"step": task.step, "n": task.context.get("n")}

    doc = {"name": "tls-check", "version": "1.0.0", "definition": {"steps": [
        {"name": "first", "type": "service_call", "service": "tls-svc"},
        {"name": "second", "type": "service_call", "service": "tls-svc", "depends_on": ["first"]}]}}
    client = Client(connect(url), settings)
    worker = EngineWorker(connect(url), settings) if engine else None
    activities = ActivityWorker(connect(url), settings, registry=registry)
    tasks = [asyncio.create_task(runner.run()) for runner in (worker, activities) if runner is not None]
    try:
        definition, _ = await client.register(doc)
        ids = [await client.start(definition.name, {"n": i}) for i in range(3)]
        for i, iid in enumerate(ids):
            state = await client.wait(iid, timeout=20)
            assert state.status == "completed", state
            assert (await client.status(iid))["steps"]["second"]["output"] == {"step": "second", "n": i}
    finally:
        for runner in (worker, activities):
            if runner is not None:
                runner.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.close()
        for runner in (worker, activities):
            if runner is not None:
                await runner.redis.aclose()


# -- 4. per-field size limits ---------------------------------------------------------------
def test_field_limits_at_decoding() -> None:
    def cmd(**fields: str) -> dict[bytes, bytes]:
        base = {"type": "cancel", "id": "i-1", "data": "{}"}
        return {k.encode(): v.encode() for k, v in {**base, **fields}.items()}

    with pytest.raises(PoisonMessage, match="field 'type' is 201 characters, over the limit of 200"):
        decode_command_entry("1-0", cmd(type="x" * 201), 1 << 20)
    with pytest.raises(PoisonMessage, match=f"field 'cmd_id' is {MAX_CMD_ID_CHARS + 1} characters, over the "
                                            f"limit of {MAX_CMD_ID_CHARS}"):
        decode_command_entry("1-0", cmd(cmd_id="c" * (MAX_CMD_ID_CHARS + 1)), 1 << 20)
    with pytest.raises(PoisonMessage, match="field 'correlation_id' is 201 characters, over the limit of 200"):
        decode_command_entry("1-0", cmd(type="start", data='{"workflow": "w", "correlation_id": "%s"}' % ("c" * 201)),
                             1 << 20)
    # at the limits: accepted; the longest cmd_id foldflow makes itself fits
    longest = f"res:{'i' * 200}:{'s' * 100}:{2**31}"
    assert len(longest) < MAX_CMD_ID_CHARS
    env = decode_command_entry("1-0", cmd(type="start", cmd_id=longest,
                                          data='{"workflow": "w", "correlation_id": "%s"}' % ("c" * 200)), 1 << 20)
    assert env.cmd_id == longest
    with pytest.raises(PoisonMessage, match="field 'type' is 201 characters, over the limit of 200"):
        decode_event_fields({b"type": b"e" * 201, b"data": b"{}"}, 1 << 20)
    with pytest.raises(PoisonMessage, match="field 'correlation_id' is 201 characters, over the limit of 200"):
        decode_event_fields({b"type": b"e", b"data": b"{}", b"correlation_id": b"c" * 201}, 1 << 20)
    assert decode_event_fields({b"type": b"e" * 200, b"data": b"{}", b"correlation_id": b"c" * 200}, 1 << 20)[0]


def test_field_limits_are_dead_lettered_by_the_workers(settings: Settings, agent_example: bytes) -> None:
    keys = Keys(settings.prefix, settings.partitions)

    async def scenario() -> None:
        client = Client(connect(settings.redis_url), settings)
        worker = EngineWorker(connect(settings.redis_url), settings)
        r: aioredis.Redis = client.redis
        definition, _ = await client.register(agent_example)
        iid = "limits-1"
        inbox = keys.inbox(keys.partition(iid))
        start = '{"workflow": "%s", "context": {"project_id": "p", "task_id": "t", "agent_id": "a"}%s}'
        bad = {
            await r.xadd(inbox, {"type": "c" * 201, "id": iid, "data": "{}"}): "field 'type' is 201 characters",
            await r.xadd(inbox, {"type": "start", "id": iid, "data": start % (definition.name, ""),
                                 "cmd_id": "k" * 513}): "field 'cmd_id' is 513 characters, over the limit of 512",
            await r.xadd(inbox, {"type": "start", "id": iid, "data": start % (
                definition.name, ', "correlation_id": "%s"' % ("c" * 201))}):
                "field 'correlation_id' is 201 characters, over the limit of 200",
        }
        bad_events = {
            await r.xadd(keys.events, {"type": "e" * 201, "data": "{}"}): "field 'type' is 201 characters",
            await r.xadd(keys.events, {"type": "agent.task_completed", "data": "{}", "correlation_id": "c" * 201}):
                "field 'correlation_id' is 201 characters, over the limit of 200",
        }
        task = asyncio.create_task(worker.run())
        try:
            async def dead(stream: str, n: int) -> Any:
                entries: Any = await r.xrange(stream)
                return entries if len(entries) >= n else None

            letters = await eventually(lambda: dead(keys.dlq(keys.partition(iid)), len(bad)))
            reasons = {f[b"entry_id"]: f[b"reason"].decode() for _, f in letters}
            for entry_id, expected in bad.items():
                assert expected in reasons[entry_id], (expected, reasons[entry_id])
            letters = await eventually(lambda: dead(f"{keys.events}:dlq", len(bad_events)))
            reasons = {f[b"entry_id"]: f[b"reason"].decode() for _, f in letters}
            for entry_id, expected in bad_events.items():
                assert expected in reasons[entry_id], (expected, reasons)
            assert await r.exists(keys.instance(iid)) == 0  # none of the bad starts created it
            # and the client refuses them before sending
            with pytest.raises(InvalidInput, match="field 'correlation_id' is 201 characters"):
                await client.start(definition.name, {"project_id": "p", "task_id": "t", "agent_id": "a"},
                                   correlation_id="c" * 201)
            with pytest.raises(InvalidInput, match="field 'type' is 201 characters"):
                await client.publish("e" * 201, {})
        finally:
            worker.stop()
            await asyncio.gather(task, return_exceptions=True)
            await client.close()
            await worker.redis.aclose()

    run(scenario())
