"""Fault test of per-service limits with real processes: an activity worker is
SIGKILLed while it holds both in-flight permits of a service limited to 2 (lease
1 s). Its permits lapse after their lease, long before its tasks are redelivered
(task claim idle 6 s): the other worker's waiting tasks run meanwhile; then the
killed tasks run again there; every instance completes, no permit or waiting
entry is left, and, counted from the handlers' own records (a killed run counted
as running until the kill), never more than 2 ran at once."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from engine.client import Client
from engine.config import Settings
from engine.errors import UnknownInstance
from engine.store.connection import connect
from engine.store.keys import Keys
from engine.store.limits import LimitStore, limits_runner, parse_limits
from tests.support.fault_support import Procs
from tests.support.limit_handlers import IN_FLIGHT_SERVICE, definition, most_at_once, runs
from tests.support.poll import eventually, run
from tests.support.tools import FAULT_KNOBS, foldflow_env

pytestmark = pytest.mark.redis
HANDLERS = ["--module", "tests.support.limit_handlers"]
CLAIM_IDLE_MS = 6_000


def test_a_killed_workers_permits_lapse_and_the_limit_holds(settings: Settings, tmp_path: Path) -> None:
    env = foldflow_env(settings, FAULT_KNOBS, FOLDFLOW_TASK_CLAIM_IDLE_MS=str(CLAIM_IDLE_MS))
    procs = Procs(env, tmp_path)
    log = tmp_path / "runs.log"
    keys = Keys(settings.prefix, settings.partitions)

    async def scenario() -> tuple[float, int, list[str], list[str]]:
        redis = connect(settings.redis_url)
        limits = LimitStore(limits_runner(redis), keys)
        await limits.put(IN_FLIGHT_SERVICE, parse_limits({"in_flight": 2, "lease": "1s"}))
        client = Client(redis, settings)
        await client.register(orjson.dumps(definition("lim-crash", IN_FLIGHT_SERVICE)))
        procs.start("w", "worker")
        victim = procs.start("a1", "activities", *HANDLERS, "--concurrency", "2").pid
        held = [await client.start("lim-crash", {"log": str(log), "sleep": 3}, instance_id=f"held-{i}") for i in range(2)]
        await eventually(lambda: sum(r[0][2] == victim for r in runs(log).values()) == 2, 30,
                         "the victim runs both permitted tasks", interval=0.05)
        procs.start("a2", "activities", *HANDLERS, "--concurrency", "4")
        later = [await client.start("lim-crash", {"log": str(log), "sleep": 0.2}, instance_id=f"later-{i}")
                 for i in range(6)]
        procs.kill("a1")
        killed_at = time.time()

        async def done() -> bool:
            return all([(await client.status(i))["status"] == "completed" for i in held + later])

        await eventually(done, 60, "every instance completed", interval=0.2, retry_on=(UnknownInstance,))
        usage = await limits.usage(IN_FLIGHT_SERVICE, await limits.get(IN_FLIGHT_SERVICE))
        assert (usage.in_flight, usage.waiting_in_flight) == (0, 0), usage
        await client.close()
        return killed_at, victim, held, later

    try:
        killed_at, victim, held, later = run(scenario())
    finally:
        procs.kill_all()
    found = runs(log)
    held_tasks = [t for t in found if t.startswith("held-")]
    assert len(held_tasks) == 2 and all(len(found[t]) == 2 for t in held_tasks), "each killed task ran again"
    assert all(found[t][0][2] == victim and found[t][0][1] is None for t in held_tasks)
    later_starts = sorted(r[0][0] for t, r in found.items() if t.startswith("later-"))
    rerun_starts = sorted(found[t][1][0] for t in held_tasks)
    assert len(later_starts) == 6 and later_starts[0] > killed_at
    assert later_starts[0] < rerun_starts[0], "the dead worker's permits lapsed before its tasks came back"
    intervals = [(s, e if e is not None else killed_at) for r in found.values() for s, e, _ in r]
    assert most_at_once(intervals) <= 2, "never more than 2 in flight, the killed runs included"
    print(f"killed at {killed_at:.2f}: later tasks ran from +{later_starts[0] - killed_at:.2f}s, "
          f"killed tasks again from +{rerun_starts[0] - killed_at:.2f}s")
