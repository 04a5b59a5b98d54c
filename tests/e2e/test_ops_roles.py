"""Operations, with real worker processes on a real redis-server: each role's
scrape moves during a run and validates with promtool; health endpoints answer
with Redis up and down; `foldflow stuck` says what an instance waits for;
`foldflow top` draws the right picture in a 100x30 tmux pane."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from engine.client import Client
from engine.config import Settings
from engine.dev.embedded import RedisServer
from engine.errors import UnknownInstance
from engine.runtime.stuck import find_stuck
from engine.store.keys import Keys
from tests.support.ops_support import SLOW_FLOW, free_port, get, stop, wait_http
from tests.support.poll import eventually, run, wait_for
from tests.support.tools import OPS_KNOBS, ROOT, foldflow_env, require_tool, spawn

pytestmark = pytest.mark.redis


def sample(text: str, name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total


def promtool_check(text: str) -> None:
    promtool = require_tool("promtool", "it validates each role's /metrics; apt-get install prometheus")
    proc = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()


@pytest.fixture
def deployment(settings: Settings, agent_example: bytes, tmp_path: Path) -> Any:
    """An engine worker and an activity worker as processes, each with its metrics port."""
    ports = {"engine": free_port(), "activities": free_port(), "projector": free_port()}
    env = foldflow_env(settings, OPS_KNOBS, FOLDFLOW_METRICS_HOST="127.0.0.1", FOLDFLOW_LOG_FORMAT="json")
    procs = {
        "engine": spawn(["--metrics-port", str(ports["engine"]), "worker"], env, tmp_path / "engine.log"),
        "activities": spawn(["--metrics-port", str(ports["activities"]), "activities", "--module",
                             "engine.dev.demo_handlers"], env, tmp_path / "activities.log"),
        "projector": spawn(["--metrics-port", str(ports["projector"]), "projector"], env, tmp_path / "projector.log"),
    }
    try:
        for port in ports.values():
            wait_http(f"http://127.0.0.1:{port}/health/liveness")
        yield ports, procs, env
    finally:
        for p in procs.values():
            stop(p)


async def _monitoring_waits(client: Client, iid: str) -> bool:
    return bool((await client.status(iid))["steps"]["execution_monitoring"]["status"] == "waiting")


def run_instances(settings: Settings, agent_example: bytes, n: int) -> list[str]:
    async def go() -> list[str]:
        client = Client(aioredis.Redis.from_url(settings.redis_url), settings)
        try:
            definition, _ = await client.register(agent_example)
            ids = [await client.start(definition.name, {"task_id": f"t{i}", "agent_id": "a", "flaky": i == 0},
                                      correlation_id=f"ops-{i}") for i in range(n)]
            for i, iid in enumerate(ids):
                await client.wait(iid, timeout=20, statuses=frozenset({"running"}))
                await eventually(lambda iid=iid: _monitoring_waits(client, iid), 20, "execution_monitoring waits")
                await client.publish("agent.task_completed", {"task_id": f"t{i}", "agent_id": "a"})
            for iid in ids:
                await client.wait(iid, timeout=30)
            return ids
        finally:
            await client.close()

    return run(go())


def test_each_role_scrape_moves_and_passes_promtool(deployment: Any, settings: Settings, agent_example: bytes) -> None:
    ports, _, _ = deployment
    before = {role: get(f"http://127.0.0.1:{p}/metrics")[1].decode() for role, p in ports.items()}
    ids = run_instances(settings, agent_example, 3)
    status, body = get(f"http://127.0.0.1:{ports['engine']}/metrics")
    engine = body.decode()
    activities = get(f"http://127.0.0.1:{ports['activities']}/metrics")[1].decode()
    projector = get(f"http://127.0.0.1:{ports['projector']}/metrics")[1].decode()
    assert status == 200
    assert sample(projector, "foldflow_worker_info", role="projector") == 1
    ready = get(f"http://127.0.0.1:{ports['projector']}/health/readiness")
    assert ready[0] == 200 and b'"groups":"ok"' in ready[1]
    wf = "Agent Task Execution"
    assert sample(before["engine"], "workflow_execution_count_total") == 0
    assert sample(engine, "workflow_execution_count_total", workflow=wf, status="completed") == 3
    assert sample(engine, "workflow_execution_duration_seconds_count", workflow=wf) == 3
    assert sample(engine, "workflow_step_execution_duration_seconds_count", workflow=wf, step_type="service_call") >= 9
    assert sample(engine, "step_error_rate_total", workflow=wf, kind="handler") == 1  # the flaky first attempt
    assert sample(engine, "workflow_retry_count_total", workflow=wf) == 1
    assert sample(engine, "foldflow_engine_commands_total") > sample(before["engine"], "foldflow_engine_commands_total")
    # Exported, and zero: the one engine worker is the only writer of the instance streams,
    # so none of its appends is refused on version.
    assert re.search(r"(?m)^foldflow_engine_append_conflicts_total(\{[^}]*\})? ", engine), engine
    assert sample(engine, "foldflow_engine_append_conflicts_total") == 0
    assert 0 < sample(engine, "foldflow_engine_cache_hit_ratio") <= 1
    assert sample(engine, "foldflow_workers_alive", role="activities") == 1
    assert sample(engine, "foldflow_router_commands_total") == 3
    for p in range(settings.partitions):
        assert f'foldflow_stream_lag_entries{{group="engine",partition="{p}",queue=""}}' in engine
    assert "foldflow_dead_letter_entries" in engine and "foldflow_circuit_breaker_state" in engine
    assert sample(activities, "foldflow_activity_tasks_total", service="agent-orchestrator", outcome="failed") == 1
    assert sample(activities, "foldflow_activity_handler_duration_seconds_count") >= 9
    assert 'group="activities"' in activities
    # Bounded labels: no instance id and no correlation id ever appears in a scrape.
    for text in (engine, activities, projector):
        values = set(re.findall(r'="([^"]*)"', re.sub(r"(?m)^#.*$", "", text)))
        assert not values & ({f"ops-{i}" for i in range(3)} | set(ids)), values
        assert {label for label in re.findall(r'[{,](\w+)="', text)} <= {
            "workflow", "status", "step_type", "kind", "event", "service", "outcome", "group", "partition", "queue",
            "role", "version", "le", "implementation", "major", "minor", "patchlevel"}
        promtool_check(text)


def test_health_endpoints_with_redis_up_and_down(tmp_path: Path, redis_server_bin: str) -> None:
    server = RedisServer().start()
    port = free_port()
    settings = Settings(redis_url=server.url, prefix="ffh", partitions=2)
    env = foldflow_env(settings, OPS_KNOBS, FOLDFLOW_METRICS_HOST="127.0.0.1")
    proc = spawn(["--metrics-port", str(port), "worker"], env, tmp_path / "w.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/health/liveness")
        wait_for(lambda: get(f"{base}/health/readiness")[0] == 200, 10, "readiness answers 200")
        code, body = get(f"{base}/health/readiness")
        assert orjson.loads(body)["checks"] == {"redis": "ok", "scripts": "ok", "groups": "ok", "lifecycle": "ok"}
        code, body = get(f"{base}/health/dependencies")
        assert code == 200 and orjson.loads(body)["dependencies"]["redis"]["status"] == "ok"
        cli = [sys.executable, "-m", "engine.ops.cli", "health"]
        assert subprocess.run([*cli, "--port", str(port)], env=env, capture_output=True, cwd=ROOT).returncode == 0
        assert subprocess.run([*cli, "--direct"], env=env, capture_output=True, cwd=ROOT).returncode == 0
        assert get(f"{base}/nope")[0] == 404

        server.stop()  # Redis goes away
        code, body = get(f"{base}/health/readiness")
        assert code == 503 and orjson.loads(body)["checks"]["redis"].startswith("unreachable")
        code, body = get(f"{base}/health/dependencies")
        assert code == 503 and orjson.loads(body)["dependencies"]["redis"]["status"] == "fail"
        assert get(f"{base}/health/liveness")[0] == 200  # the process is fine: do not restart it for Redis
        assert sample(get(f"{base}/metrics")[1].decode(), "foldflow_redis_up") == 0
        probe = subprocess.run([*cli, "--port", str(port)], env=env, capture_output=True, cwd=ROOT)
        assert probe.returncode == 1
        direct = subprocess.run([*cli, "--direct", "--timeout", "1"], env=env, capture_output=True, cwd=ROOT)
        assert direct.returncode == 1 and b"unreachable" in direct.stdout
    finally:
        stop(proc)
        server.stop()


def test_stuck_names_what_each_instance_waits_for(deployment: Any, settings: Settings, agent_example: bytes) -> None:
    _, _, env = deployment

    async def go() -> tuple[str, str]:
        client = Client(aioredis.Redis.from_url(settings.redis_url), settings)
        try:
            await client.register(orjson.dumps(SLOW_FLOW))  # its queue "ops-slow" has no worker here
            definition, _ = await client.register(agent_example)
            orphan = await client.start("ops-slow", {"sleep": 0}, instance_id="orphan-1")
            waiter = await client.start(definition.name, {"task_id": "never", "agent_id": "x"}, instance_id="waiter-1")
            await client.wait(orphan, timeout=20, statuses=frozenset({"running"}))
            await client.wait(waiter, timeout=20, statuses=frozenset({"running"}))
            await eventually(lambda: _monitoring_waits(client, waiter), 20, "execution_monitoring waits")
            return orphan, waiter
        finally:
            await client.close()

    run(go())
    out = subprocess.run([sys.executable, "-m", "engine.ops.cli", "stuck", "--older-than", "0s", "--json"], env=env,
                         capture_output=True, cwd=ROOT, timeout=30)
    assert out.returncode == 0, out.stderr
    found = {s["instance_id"]: s for s in orjson.loads(out.stdout)}
    assert set(found) == {"orphan-1", "waiter-1"}
    assert "no live activity worker serves this queue" in found["orphan-1"]["waits_for"][0]
    assert "'ops-slow'" in found["orphan-1"]["waits_for"][0]
    assert "agent.task_completed" in found["waiter-1"]["waits_for"][0]
    assert '"task_id":"never"' in found["waiter-1"]["waits_for"][0]
    text = subprocess.run([sys.executable, "-m", "engine.ops.cli", "stuck", "--older-than", "10m"], env=env,
                          capture_output=True, cwd=ROOT, timeout=30)
    assert text.returncode == 0 and b"no stuck instances" in text.stdout
    bad = subprocess.run([sys.executable, "-m", "engine.ops.cli", "stuck", "--older-than", "soon"], env=env,
                         capture_output=True, cwd=ROOT, timeout=30)
    assert bad.returncode == 2 and b"--older-than" in bad.stderr


def test_top_in_a_100x30_terminal(deployment: Any, settings: Settings, agent_example: bytes) -> None:
    require_tool("tmux", "it gives `foldflow top` a 100x30 terminal")
    _, _, env = deployment
    run_instances(settings, agent_example, 2)
    session = f"fftop{settings.prefix}"
    exports = " ".join(f"{k}={v}" for k, v in env.items() if k.startswith(("FOLDFLOW_", "REDIS_URL", "PYTHONPATH")))
    cmd = f"cd {ROOT} && env {exports} {sys.executable} -m engine.ops.cli top --interval 0.3"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "100", "-y", "30", cmd], check=True)
    try:
        def capture() -> str:
            return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout

        screen = wait_for(capture, 20, "top shows the workflow and the three workers", interval=0.1,
                          ok=lambda s: "Agent Task Execution" in s and "WORKERS (3 alive)" in s)
        lines = screen.splitlines()
        assert len(lines) <= 30 and all(len(line) <= 100 for line in lines), screen
        assert lines[0].startswith(f"foldflow top  prefix {settings.prefix}  partitions {settings.partitions}")
        row = next(line for line in lines if line.startswith("Agent Task Execution"))
        assert row.split()[-6:] == ["0", "0", "0", "0", "2", "0"], row  # running waiting paused failed completed cancelled
        assert "INBOX LAG/PENDING  p0:0/0  p1:0/0  p2:0/0  p3:0/0" in screen
        assert "engine" in screen and "activities" in screen
        slow = [line for line in lines if "Agent Task Execution / " in line]
        assert slow and "execution_monitoring" in screen
        subprocess.run(["tmux", "send-keys", "-t", session, "q"], check=True)
        wait_for(lambda: subprocess.run(["tmux", "has-session", "-t", session], capture_output=True).returncode != 0,
                 5, "q quits top")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


PAUSABLE = {"name": "ops-pausable", "version": "1", "definition": {"steps": [
    {"name": "s1", "step_type": "service_call", "service": "agent-orchestrator", "endpoint": "/a"},
    {"name": "s2", "step_type": "service_call", "service": "agent-orchestrator", "endpoint": "/b",
     "depends_on": ["s1"]}]}}


def test_stuck_finds_a_paused_instance_with_nothing_in_flight(deployment: Any, settings: Settings) -> None:
    """Paused before its first result came back: s1 completes, s2 is not dispatched, so no
    task, wait or timer names it. The projections' status index does."""
    _, _, env = deployment
    keys = Keys(settings.prefix, settings.partitions)

    async def go() -> str:
        client = Client(aioredis.Redis.from_url(settings.redis_url), settings)
        try:
            await client.register(PAUSABLE)
            iid = await client.start("ops-pausable", {}, instance_id="paused-1")
            # straight behind the start in the inbox (client.pause wants the instance to exist),
            # so the pause is decided before s1's result comes back
            await client.send("pause", iid, {"reason": "held for the test"}, cmd_id="pause:paused-1")
            async def paused_after_s1() -> dict[str, Any] | None:
                try:
                    status: dict[str, Any] = await client.status(iid)
                except UnknownInstance:
                    return None
                done = status["status"] == "paused" and status["steps"]["s1"]["status"] == "completed"
                return status if done else None

            await eventually(paused_after_s1, 20, "paused with s1 completed")
            # nothing in flight names it: the in-flight scan alone does not find it
            assert [s.instance_id for s in await find_stuck(client.redis, keys, 0)] == []
            return iid
        finally:
            await client.close()

    iid = run(go())
    def stuck() -> dict[str, Any]:
        out = subprocess.run([sys.executable, "-m", "engine.ops.cli", "stuck", "--older-than", "0s", "--json"],
                             env=env, capture_output=True, cwd=ROOT, timeout=30)
        assert out.returncode == 0, out.stderr
        return {s["instance_id"]: s for s in orjson.loads(out.stdout)}

    # the projector indexes it as paused
    found = wait_for(stuck, 20, "stuck lists the paused instance", interval=0.2, ok=lambda f: iid in f)
    assert found[iid]["status"] == "paused"
    assert found[iid]["waits_for"] == [f"paused: nothing new is dispatched until `foldflow resume {iid}`"]
