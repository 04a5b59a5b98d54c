"""Batch runners SIGKILLed again and again while a cancel batch runs (real processes:
an engine worker, a projector and two `foldflow batches` runners on a real
redis-server). At the end the batch has completed, matched == done + failed with no
failure, and every execution was cancelled exactly once: one `workflow.cancelled`
event each, no command rejected, each caused by the batch's command for that item
(its cmd_id: a resend after a kill is one the engine applies once)."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from engine.client import Client
from engine.config import Settings
from engine.core.batches import BatchQuery, BatchSpec, cmd_id
from engine.store.batches import BatchStore
from engine.store.connection import connect
from engine.store.keys import Keys
from projections.queries import Queries
from tests.support.fault_support import histories, start_many
from tests.support.poll import eventually, run
from tests.support.tools import FAULT_KNOBS, foldflow_env, spawn

pytestmark = pytest.mark.redis
KILL_EVERY_S = 1.0


def waiting(name: str) -> dict[str, object]:
    return {"name": name, "version": "1",
            "steps": [{"name": "w", "type": "event_wait", "event_type": "never.sent", "filter": {"k": "v"}}]}


class Runners:
    """Named `foldflow batches` processes, restarted under a new consumer name after each kill."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs = env, logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.generation: Counter[str] = Counter()
        self.kills = 0

    def start(self, name: str) -> None:
        self.generation[name] += 1
        consumer = f"{name}.{self.generation[name]}"
        self.procs[name] = spawn(["batches", "--consumer", consumer], self.env, self.logs / f"{consumer}.log")

    def kill_and_restart(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGKILL)
        self.procs[name].wait()
        self.kills += 1
        self.start(name)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


async def scenario(settings: Settings, tmp_path: Path, n: int) -> None:
    env = foldflow_env(settings, FAULT_KNOBS)
    keys = Keys(settings.prefix, settings.partitions)
    others = [spawn(["worker"], env, tmp_path / "worker.log"), spawn(["projector"], env, tmp_path / "projector.log")]
    runners = Runners(env, tmp_path)
    redis = connect(settings.redis_url)
    try:
        workflow = "fault-batch"
        await Client(redis, settings).register(waiting(workflow))
        ids = [f"fb-{i}" for i in range(n)]
        await start_many(redis, keys, ids, workflow)
        queries = Queries(redis, settings)
        await eventually(lambda: queries.count(status="running", workflow=workflow), 120, "all running",
                         ok=lambda c: c == n)
        store = BatchStore(redis, keys)
        # About four seconds of work at this rate, so the kills land in every phase of it.
        spec = BatchSpec(operation="cancel", query=BatchQuery(workflow=workflow), rate=max(50, n // 4))
        batch = await store.create(spec, int(time.time() * 1000))
        for name in ("r1", "r2"):
            runners.start(name)
        began = time.monotonic()
        deadline = time.monotonic() + 120
        while (current := await store.found(batch.id)).active:
            assert time.monotonic() < deadline, f"batch stuck: {current}"
            await asyncio.sleep(KILL_EVERY_S * random.uniform(0.5, 1.5))
            holder: Any = await redis.get(keys.batch(batch.id, "lease"))  # "<consumer>:<nonce>", consumer "r1.3"
            if holder is not None:  # the runner advancing it, killed mid-step
                runners.kill_and_restart(holder.decode().split(".", 1)[0])
        assert runners.kills >= 2, "the batch ended before the kills tested anything"
        assert (current.state, current.matched, current.done, current.failed) == ("completed", n, n, 0), current
        await eventually(lambda: _cancelled(redis, keys, ids), 60, "every execution cancelled", ok=lambda c: c == n)
        hist = await histories(redis, keys, ids)
        cancels = Counter(iid for iid, h in hist.items() for e in h if e["type"] == "workflow.cancelled")
        assert set(cancels.values()) == {1} and len(cancels) == n  # each cancelled exactly once
        assert not [e for h in hist.values() for e in h if e["type"] == "workflow.command_rejected"]
        # Each cancellation is this batch's command for that item (its cmd_id rides on the event).
        assert {iid: e["data"].get("cmd") for iid, h in hist.items() for e in h if e["type"] == "workflow.cancelled"} == \
            {iid: cmd_id(batch.id, iid) for iid in ids}
        print(f"{runners.kills} kills; matched {current.matched}, done {current.done}, "
              f"batch took {time.monotonic() - began:.1f}s")
    finally:
        runners.stop()
        for proc in others:
            proc.terminate()
            proc.wait(30)
        await redis.aclose()


async def _cancelled(redis: object, keys: Keys, ids: list[str]) -> int:
    hist = await histories(redis, keys, ids)  # type: ignore[arg-type]
    return sum(1 for h in hist.values() if h and h[-1]["type"] == "workflow.cancelled")


def test_batch_runners_killed_repeatedly_lose_no_item_and_do_none_twice(settings: Settings, tmp_path: Path) -> None:
    run(scenario(settings, tmp_path, 300))


@pytest.mark.slow
def test_batch_runners_killed_repeatedly_over_2000_items(settings: Settings, tmp_path: Path) -> None:
    run(scenario(settings, tmp_path, 2000))
