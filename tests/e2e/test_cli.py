"""The `foldflow` command line against a real Redis, as an operator uses it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from engine.config import Settings
from tests.support.poll import wait_for
from tests.support.tools import EXAMPLES, ROOT, foldflow_env, require_redis_server

pytestmark = pytest.mark.redis


def cli(settings: Settings, *args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full_env = foldflow_env(settings, env or {})
    return subprocess.run([sys.executable, "-m", "engine.ops.cli", *args], env=full_env, capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_register_start_status_history(settings: Settings) -> None:
    example = str(EXAMPLES / "agent-task-execution.json")
    out = json.loads(ok(cli(settings, "definitions", "register", example)))
    assert out == {"name": "Agent Task Execution", "version": "1.0.0", "steps": 4, "created": True}
    again = json.loads(ok(cli(settings, "definitions", "register", example)))
    assert again["created"] is False  # the same body again is fine
    iid = ok(cli(settings, "start", "Agent Task Execution", "--context",
                 '{"project_id": "p", "task_id": "t-9", "agent_id": "a-9"}', "--correlation-id", "corr-9",
                 "--id", "cli-1")).strip()
    assert iid == "cli-1"
    # no worker runs: the start command waits in the inbox and the instance does not exist yet
    missing = cli(settings, "status", "cli-1")
    assert missing.returncode == 1 and "not found" in missing.stderr and "Traceback" not in missing.stderr
    worker = subprocess.Popen([sys.executable, "-m", "engine.ops.cli", "worker"], cwd=ROOT,
                              env=foldflow_env(settings, FOLDFLOW_BLOCK_MS="50"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        proc = wait_for(lambda: cli(settings, "status", "cli-1"), 30, "status finds the started instance",
                        interval=0.2, ok=lambda p: p.returncode == 0)
        status = json.loads(proc.stdout)
        assert status["id"] == "cli-1" and status["status"] == "running"
        assert status["workflow"] == "Agent Task Execution" and status["version"] == "1.0.0"
        assert status["correlation_id"] == "corr-9"
        assert status["steps"]["task_preparation"] == {"status": "scheduled", "attempt": 1, "output": None}
        assert status["steps"]["result_processing"]["status"] == "pending"
        history = json.loads(ok(cli(settings, "history", "cli-1")))
        assert [e["version"] for e in history] == [1, 2, 3]
        assert [e["type"] for e in history] == ["workflow.created", "workflow.started", "workflow.step_scheduled"]
        assert all(isinstance(e["ts"], int) for e in history)
        assert history[2]["data"]["step"] == "task_preparation" and history[2]["data"]["attempt"] == 1
        assert history[2]["data"]["endpoint"] == "/tasks/t-9/prepare"
        published = json.loads(ok(cli(settings, "events", "publish", "agent.task_completed", "--data",
                                      '{"task_id": "t-9"}', "--correlation-id", "corr-9")))
        assert published["type"] == "agent.task_completed" and "-" in published["entry_id"]
        cancelled = json.loads(ok(cli(settings, "cancel", "cli-1", "--reason", "test")))
        assert cancelled["command"] == "cancel"
    finally:
        worker.terminate()
        assert worker.wait(30) == 0, worker.stderr.read().decode() if worker.stderr else ""


def test_invalid_definition_lists_every_problem_and_stores_nothing(settings: Settings, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "bad", "version": "1", "definition": {"steps": [
        {"name": "a", "step_type": "service_call", "service": "s", "depends_on": ["b"]},
        {"name": "b", "step_type": "service_call", "service": "s", "depends_on": ["a"]},
        {"name": "b", "step_type": "teleport"},
        {"name": "c", "step_type": "service_call", "endpoint": "/x/{{ context.y"},
        {"name": "d", "step_type": "service_call", "service": "s", "depends_on": ["nope"]},
    ]}}))
    proc = cli(settings, "definitions", "register", str(bad))
    assert proc.returncode == 2
    err = proc.stderr
    assert "Traceback" not in err
    for expected in ("definition.steps[2].name: duplicate step name 'b'", "unknown step type 'teleport'",
                     "definition.steps[3].service", "definition.steps[3].endpoint", "unknown step 'nope'",
                     "cycle"):
        assert expected in err, (expected, err)
    r = redis.Redis.from_url(settings.redis_url)
    assert r.exists(f"{settings.prefix}:def:bad") == 0
    assert cli(settings, "definitions", "validate", str(bad)).returncode == 2


def test_conflicting_body_for_a_registered_version_is_refused(settings: Settings, tmp_path: Path) -> None:
    doc: dict[str, Any] = json.loads((EXAMPLES / "agent-task-execution.json").read_text())
    first = tmp_path / "v1.json"
    first.write_text(json.dumps(doc))
    ok(cli(settings, "definitions", "register", str(first)))
    doc["definition"]["steps"][0]["endpoint"] = "/changed"
    changed = tmp_path / "v1-changed.json"
    changed.write_text(json.dumps(doc))
    proc = cli(settings, "definitions", "register", str(changed))
    assert proc.returncode == 2 and "already registered with a different body" in proc.stderr
    r = redis.Redis.from_url(settings.redis_url)
    stored = json.loads(r.hget(f"{settings.prefix}:def:Agent Task Execution", "v:1.0.0"))
    assert stored["definition"]["steps"][0]["endpoint"] == "/tasks/{task_id}/prepare"


def test_bad_arguments_are_clear_errors(settings: Settings) -> None:
    proc = cli(settings, "start", "nope", "--context", "{not json")
    assert proc.returncode == 2 and "--context is not valid JSON" in proc.stderr
    proc = cli(settings, "start", "no-such-workflow")
    assert proc.returncode == 1 and "not registered" in proc.stderr
    proc = cli(settings, "status", "bad id!")
    assert proc.returncode == 2 and "invalid instance id" in proc.stderr
    proc = cli(settings, "history", "never-started")
    assert proc.returncode == 1 and "not found" in proc.stderr
    proc = cli(settings, "cancel", "never-started")
    assert proc.returncode == 1 and "not found" in proc.stderr
    proc = cli(settings, "status", "x", env={"REDIS_URL": "redis://127.0.0.1:1/0"})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    proc = cli(settings, "worker", env={"FOLDFLOW_PARTITIONS": "zero"})
    assert proc.returncode == 2 and "FOLDFLOW_PARTITIONS" in proc.stderr


def test_worker_refuses_a_partition_count_other_than_the_recorded_one(settings: Settings) -> None:
    r = redis.Redis.from_url(settings.redis_url)
    r.hset(f"{settings.prefix}:meta", "partitions", 16)
    proc = cli(settings, "worker", timeout=30)
    assert proc.returncode == 2 and "partitions=16" in proc.stderr


@pytest.mark.parametrize("mode", ["fake", "embedded"])
def test_demo_completes_on_the_embedded_default(mode: str, tmp_path: Path) -> None:
    env = foldflow_env(drop=("REDIS_URL",))
    if mode == "fake":
        # No redis-server on PATH at all: the demo must fall back to the in-process fake.
        bindir = tmp_path / "bin"
        bindir.mkdir()
        (bindir / "python").symlink_to(sys.executable)
        env["PATH"] = str(bindir)
        assert shutil.which("redis-server", path=env["PATH"]) is None
    else:
        require_redis_server("the demo starts an embedded redis-server")
    proc = subprocess.run([sys.executable, "-m", "engine.ops.cli", "demo"], env=env, capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "5/5 instances completed" in proc.stdout
    assert ("in-process fake" if mode == "fake" else "embedded redis-server") in proc.stdout
    assert "workflow.step_failed" in proc.stdout  # the simulated failure and its retry show


@pytest.mark.parametrize("url", ["redis://127.0.0.1:1/0?bogus=1", "redis+cluster://127.0.0.1:1/0?ssl_password=x"])
def test_an_option_the_redis_client_does_not_take_is_a_configuration_error(settings: Settings, url: str) -> None:
    """Named (never the URL itself: it may hold a password), exit 2, no traceback; a single
    server's client would otherwise raise a TypeError from its first command."""
    proc = cli(settings, "status", "some-id", env={"REDIS_URL": url})
    option = url.rsplit("?", 1)[1].split("=")[0]
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert f"option a Redis{' Cluster' if 'cluster' in url else ''} client does not take: {option!r}" in proc.stderr
    assert "Traceback" not in proc.stderr and "127.0.0.1:1" not in proc.stderr
