"""Code nodes end to end: a workflow whose steps call the service ``foldflow.code``
(written natively as service_call steps, so this does not depend on the formats'
translation) runs through a real engine worker and a real ``foldflow activities
--code`` process (beside ``--http`` and ``--module``), each call in a fresh bubblewrap
sandbox. The refusals to start are in tests/unit/test_code_sandbox.py."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.client import Client
from engine.config import Settings
from engine.core.formats import CODE_SERVICE
from engine.errors import StoreUnavailable
from tests.support.tools import WORKER_KNOBS, foldflow_env, require_tool, spawn

CODE_ENV = {"FOLDFLOW_CODE_NODES": "sandbox", "FOLDFLOW_CODE_CPU_S": "2", "FOLDFLOW_CODE_WALL_S": "20"}
SUM = "def process(input_data):\n    print('adding', len(input_data))\n    return {'total': sum(input_data)}\n"
DOUBLE = "def process(input_data):\n    return input_data['total'] * 2\n"
BROKEN = "def process(input_data):\n    return input_data['absent']\n"


def _code_step(name: str, code: str, given: Any, **extra: Any) -> dict[str, Any]:
    return {"name": name, "step_type": "service_call", "service": CODE_SERVICE,
            "payload": {"language": "python", "code": code, "input": given}, **extra}


DEFINITION = {"name": "code-nodes", "version": "1", "definition": {"steps": [
    _code_step("add", SUM, "{{ context.numbers }}", sequence=1),
    _code_step("double", DOUBLE, "{{ steps.add.output.output }}", sequence=2),
], "error_handlers": []}}
FAILING = {"name": "code-nodes-broken", "version": "1", "definition": {"steps": [
    _code_step("broken", BROKEN, "{{ context }}", sequence=1, retry_policy={"max_attempts": 3}),
], "error_handlers": []}}


@pytest.fixture(scope="module")
def deployment(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Path]]:
    require_tool("bwrap", "code nodes run in bubblewrap (Debian package bubblewrap)")
    logs = tmp_path_factory.mktemp("code-nodes")
    settings = Settings(redis_url=redis_url, prefix=f"code{uuid.uuid4().hex[:8]}", partitions=2,
                        code_nodes="sandbox")
    env = foldflow_env(settings, WORKER_KNOBS, CODE_ENV)
    # --code beside --http and --module: the sandbox's queue stays its own.
    code = ["activities", "--code", "--http", "--module", "engine.dev.demo_handlers"]
    procs = [spawn(["worker"], env, logs / "worker.log"), spawn(code, env, logs / "code.log")]
    try:
        yield settings, logs
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def _run(settings: Settings, definition: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    client = Client.from_url(settings.redis_url, settings)
    try:
        await client.register(definition)
        iid = await client.start(definition["name"], context)
        with contextlib.suppress(TimeoutError, StoreUnavailable):  # the status (and the log) say why
            await client.wait(iid, timeout=60)
        return await client.status(iid)
    finally:
        await client.close()


def _log(logs: Path) -> str:
    return (logs / "code.log").read_text(errors="replace")[-3000:]


def test_a_workflow_of_code_nodes_runs_in_the_sandbox(deployment: tuple[Settings, Path]) -> None:
    settings, logs = deployment
    status = asyncio.run(_run(settings, DEFINITION, {"numbers": [1, 2, 3, 4]}))
    assert status["status"] == "completed", (status, _log(logs))
    steps = status["steps"]
    add = steps["add"]["output"]
    assert add["output"] == {"total": 10} and add["stdout"] == "adding 4\n"
    assert isinstance(add["duration_ms"], int)
    assert steps["double"]["output"]["output"] == 20


def test_an_exception_fails_the_step_for_good_with_the_users_traceback(deployment: tuple[Settings, Path]) -> None:
    settings, logs = deployment
    status = asyncio.run(_run(settings, FAILING, {"present": True}))
    assert status["status"] == "failed", (status, _log(logs))
    steps = status["steps"]
    broken = steps["broken"]
    assert broken["attempt"] == 1  # not retryable: the same code fails the same way
    assert broken["error"]["message"].startswith("KeyError: 'absent'")
    assert 'File "<code>", line 2, in process' in broken["error"]["message"]


NORMALIZE = ("def process(input_data):\n"
             "    text = input_data['message'].strip().lower()\n"
             "    return {'text': text, 'urgent': 'down' in text}\n")
ESCALATE = "def process(input_data):\n    return {'page': 'on-call', 'about': input_data['text']}\n"
QUEUE = "def process(input_data):\n    return {'queue': 'normal', 'length': len(input_data['text'])}\n"
# Seed 001's nodes and edges with code nodes: the translation (engine/core/formats) makes each a
# task for foldflow.code, and the conditional reads a code node's output.
TRIAGE = {"name": "code-triage", "nodes": [
    {"id": "start", "type": "start", "config": {}},
    {"id": "normalize", "type": "code", "config": {"language": "python", "code": NORMALIZE,
                                                   "input_mapping": {"message": "{{input.message}}"}}},
    {"id": "route", "type": "conditional", "config": {"condition": "{{normalize.output.urgent}} == true",
                                                      "true_edge": "escalate", "false_edge": "queue"}},
    {"id": "escalate", "type": "code", "config": {"code": ESCALATE,
                                                  "input_mapping": {"text": "{{normalize.output.text}}"}}},
    {"id": "queue", "type": "code", "config": {"code": QUEUE,
                                               "input_mapping": {"text": "{{normalize.output.text}}"}}},
], "edges": [{"source": "start", "target": "normalize"}, {"source": "normalize", "target": "route"},
             {"source": "route", "target": "escalate"}, {"source": "route", "target": "queue"}]}


@pytest.mark.parametrize(("message", "taken", "skipped", "output"), [
    ("  The site is DOWN ", "escalate", "queue", {"page": "on-call", "about": "the site is down"}),
    ("How do I export?", "queue", "escalate", {"queue": "normal", "length": 16}),
])
def test_seed_001_code_nodes_take_each_route_in_the_sandbox(
        deployment: tuple[Settings, Path], message: str, taken: str, skipped: str, output: dict[str, Any]) -> None:
    settings, logs = deployment
    status = asyncio.run(_run(settings, TRIAGE, {"message": message}))
    assert status["status"] == "completed", (status, _log(logs))
    steps = status["steps"]
    assert steps["route"]["output"] == {"result": taken == "escalate", "edge": taken}
    assert steps[taken]["output"]["output"] == output
    assert steps[skipped]["status"] == "skipped"
