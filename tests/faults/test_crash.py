"""Fault test with real processes: 500 instances of the agent example, two
engine worker processes and one activity worker process on a real Redis; one
engine worker is SIGKILLed mid-run. Every instance completes, and no step
attempt is scheduled or completed twice."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path

import pytest

from engine.client import Client
from engine.config import Settings
from engine.store.connection import connect
from engine.store.keys import Keys
from tests.support.helpers import AgentSimulator, check_history
from tests.support.poll import eventually, run
from tests.support.tools import CRASH_KNOBS, foldflow_env, spawn

pytestmark = pytest.mark.redis
INSTANCES = 500




def test_sigkill_an_engine_worker_mid_run(settings: Settings, agent_example: bytes, tmp_path: Path) -> None:
    sigkill_scenario(settings, agent_example, tmp_path)


def sigkill_scenario(settings: Settings, agent_example: bytes, tmp_path: Path, instances: int = INSTANCES) -> None:
    """Two engine worker processes and one activity worker; one engine worker is SIGKILLed mid-run."""
    INSTANCES = instances
    env = foldflow_env(settings, CRASH_KNOBS)
    procs: dict[str, subprocess.Popen[bytes]] = {}

    async def scenario() -> None:
        redis = connect(settings.redis_url)
        client = Client(redis, settings)
        keys = Keys(settings.prefix, settings.partitions)
        agents = AgentSimulator(connect(settings.redis_url), client, keys)
        definition, _ = await client.register(agent_example)
        procs["w1"] = spawn(["worker"], env, tmp_path / "w1.log")
        procs["w2"] = spawn(["worker"], env, tmp_path / "w2.log")
        procs["a1"] = spawn(["activities", "--module", "engine.dev.demo_handlers"], env, tmp_path / "a1.log")
        sim = asyncio.create_task(agents.run())
        ids = []
        for i in range(INSTANCES):
            ctx = {"project_id": "p", "task_id": f"t-{i}", "agent_id": f"a-{i % 7}", "flaky": i % 10 == 0}
            ids.append(await client.start(definition.name, ctx, instance_id=f"crash-{i}"))
        await eventually(lambda: len(agents.completed) >= INSTANCES // 5, 120, "a fifth completed before the kill",
                         interval=0.02)
        killed_at = len(agents.completed)
        procs["w1"].send_signal(signal.SIGKILL)
        procs["w1"].wait()
        await eventually(lambda: len(agents.completed) >= INSTANCES, 120, "every instance completed after the kill")
        agents.stop()
        await sim
        assert killed_at < INSTANCES, "the kill came too late to test anything"
        print(f"killed w1 after {killed_at}/{INSTANCES} completions")
        events_total = 0
        for iid in ids:
            status = await client.status(iid)
            assert status["status"] == "completed", status
            history = await client.history(iid)
            check_history(history)
            events_total += len(history)
        # The feeds hold each event exactly once too.
        feed_total = sum([await redis.xlen(keys.feed(p)) for p in range(keys.partitions)])
        assert feed_total == events_total
        # Nothing is left pending in the inboxes.
        for p in range(keys.partitions):
            info = await redis.xpending(keys.inbox(p), "engine")
            assert info["pending"] == 0, (p, info)
        await client.close()
        await agents.redis.aclose()

    try:
        run(scenario())
        for name in ("w2", "a1"):
            procs[name].send_signal(signal.SIGTERM)
            assert procs[name].wait(30) == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
