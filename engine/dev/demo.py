"""`foldflow demo`: the agent-task-execution example end to end, on REDIS_URL
or on the embedded default (a redis-server we start, else an in-process fake).

Two engine workers and one activity worker run in this process; the demo plays
the agents, publishing `agent.task_completed` once each instance waits for it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from importlib import resources
from typing import Any

from engine.client import Client
from engine.config import from_env
from engine.core.model import STATUS_COMPLETED, STEP_WAITING
from engine.dev import demo_handlers  # noqa: F401 - registers the simulated services
from engine.dev.demo_api import serve_demo_api
from engine.dev.embedded import open_backend
from engine.errors import UnknownInstance
from engine.workers.activities import ActivityWorker
from engine.workers.engine import EngineWorker

EXAMPLE = "agent-task-execution.json"


def example_source() -> bytes:
    return resources.files("engine.dev").joinpath("examples", EXAMPLE).read_bytes()


async def run_demo(instances: int = 5, url: str | None = None, verbose: bool = True,
                   timeout: float = 60.0, api_port: int | None = None, api_stop: asyncio.Event | None = None) -> int:
    """With api_port, the API is served on the demo's backend once it has run, until Ctrl-C (or api_stop)."""
    say = print if verbose else (lambda *a, **k: None)
    backend = open_backend(url)
    # On a shared Redis the demo keeps to its own prefix, never the default one.
    settings = from_env(prefix=f"ffdemo-{uuid.uuid4().hex[:6]}" if url else None, block_ms=200, timer_poll_ms=50)
    say(f"foldflow demo on {backend.describe()}, prefix {settings.prefix!r}")
    client = Client(backend.client(), settings)
    workers = [EngineWorker(backend.client(), settings) for _ in range(2)]
    activities = ActivityWorker(backend.client(), settings)
    tasks: list[asyncio.Task[Any]] = []
    try:
        definition, _ = await client.register(example_source())
        say(f"registered {definition.name!r} {definition.version} ({len(definition.steps)} steps)")
        for w in workers:
            await w.prepare()
        tasks = [asyncio.create_task(w.run()) for w in workers] + [asyncio.create_task(activities.run())]
        started = time.perf_counter()
        ids = []
        for i in range(instances):
            ctx = {"project_id": "p-1", "task_id": f"t-{i + 1}", "agent_id": f"a-{i % 3 + 1}", "flaky": i == 0}
            ids.append(await client.start(definition.name, ctx, correlation_id=f"demo-{i + 1}"))
        say(f"started {instances} instances; instance 1's agent-orchestrator fails once to show a retry")
        ok = await _drive(client, ids, say, timeout)
        elapsed = time.perf_counter() - started
        await _print_histories(client, ids, say)
        done = sum(1 for s in ok.values() if s == STATUS_COMPLETED)
        say(f"\n{done}/{instances} instances completed in {elapsed:.2f}s "
            f"({instances / elapsed:.1f} instances/s, including the 1 s retry backoff)")
        if api_port is not None and await serve_demo_api(backend.client, settings, api_port, stop=api_stop,
                                                         execution_id=ids[0] if ids else None):
            return 1
        return 0 if done == instances else 1
    finally:
        for w in workers:
            w.stop()
        activities.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.close()
        backend.close()


async def _print_histories(client: Client, ids: list[str], say: Any) -> None:
    for iid in ids:
        say(f"\nhistory of {iid}:")
        for ev in await client.history(iid):
            step = ev["data"].get("step", "")
            attempt = ev["data"].get("attempt", "")
            say(f"  v{ev['version']:<3} {ev['type']:<32} {step:<22} {attempt}")


async def _drive(client: Client, ids: list[str], say: Any, timeout: float) -> dict[str, str]:
    """Publish each agent's completion once its instance waits for it; report progress."""
    published: set[str] = set()
    last: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for n, iid in enumerate(ids, 1):
            try:
                status = await client.status(iid)
            except UnknownInstance:
                continue  # its start command is still in the inbox
            line = ", ".join(f"{k}={v['status']}" + (f"#{v['attempt']}" if v["attempt"] > 1 else "")
                             for k, v in status["steps"].items())
            view = f"{status['status']}: {line}"
            if last.get(iid) != view:
                say(f"[{n}] {view}")
                last[iid] = view
            wait = status["steps"]["execution_monitoring"]
            if wait["status"] == STEP_WAITING and iid not in published:
                ctx = status["context"]
                await client.publish("agent.task_completed",
                                     {"task_id": ctx["task_id"], "agent_id": ctx["agent_id"], "result": "done"},
                                     correlation_id=status["correlation_id"])
                published.add(iid)
                say(f"[{n}] published agent.task_completed for {ctx['task_id']}/{ctx['agent_id']}")
        statuses = {iid: last.get(iid, "queued").split(":")[0] for iid in ids}
        if all(s in ("completed", "failed", "cancelled") for s in statuses.values()):
            return statuses
        await asyncio.sleep(0.1)
    return {iid: last.get(iid, "?").split(":")[0] for iid in ids}
