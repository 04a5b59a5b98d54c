"""Graceful lifecycle with real processes: SIGTERM/SIGINT let in-flight work
finish and exit 0 within a bounded time; a second signal exits at once; past
the drain limit the worker leaves; either way nothing is lost, because what
was not acknowledged is redelivered."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from engine.client import Client
from engine.config import Settings
from engine.store.keys import Keys
from tests.support.ops_support import SLOW_FLOW, stop
from tests.support.poll import run, wait_for
from tests.support.tools import OPS_KNOBS, foldflow_env, spawn

pytestmark = pytest.mark.redis


def start_slow(settings: Settings, marker: Path, sleep: float) -> str:
    async def go() -> str:
        client = Client(aioredis.Redis.from_url(settings.redis_url), settings)
        try:
            await client.register(orjson.dumps(SLOW_FLOW))
            return await client.start("ops-slow", {"sleep": sleep, "marker": str(marker)})
        finally:
            await client.close()

    return run(go())


def status_of(settings: Settings, iid: str, timeout: float) -> str:
    async def go() -> str:
        client = Client(aioredis.Redis.from_url(settings.redis_url), settings)
        try:
            return (await client.wait(iid, timeout=timeout)).status
        finally:
            await client.close()

    return run(go())


def wait_for_file(path: Path, timeout: float = 20.0) -> None:
    wait_for(path.exists, timeout, f"{path.name} appears", interval=0.02)


def exit_within(proc: subprocess.Popen[bytes], seconds: float) -> tuple[int, float]:
    started = time.monotonic()
    code = proc.wait(timeout=seconds)
    return code, time.monotonic() - started


@pytest.fixture
def engine_proc(settings: Settings, tmp_path: Path) -> Any:
    proc = spawn(["worker"], foldflow_env(settings, OPS_KNOBS), tmp_path / "engine.log")
    yield proc
    stop(proc)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_finishes_in_flight_task_then_exits_0(settings: Settings, tmp_path: Path, engine_proc: Any,
                                                     sig: signal.Signals) -> None:
    marker = tmp_path / "slow"
    acts = spawn(["activities", "--module", "tests.support.ops_handlers"], foldflow_env(settings, OPS_KNOBS), tmp_path / "acts.log")
    try:
        iid = start_slow(settings, marker, sleep=1.0)
        wait_for_file(Path(f"{marker}.1.started"))  # the handler is running now
        acts.send_signal(sig)
        code, took = exit_within(acts, 15)
        assert code == 0, (tmp_path / "acts.log").read_text()
        assert took < 10
        assert status_of(settings, iid, 20) == "completed"  # its result was reported before exit
        assert not Path(f"{marker}.1.redelivered").exists()  # ran once: nothing was left behind
        log = (tmp_path / "acts.log").read_text()
        assert "finishing in-flight work" in log and "stopped cleanly" in log
    finally:
        stop(acts)


def test_second_signal_exits_at_once_and_nothing_is_lost(settings: Settings, tmp_path: Path, engine_proc: Any) -> None:
    marker = tmp_path / "slow"
    env = foldflow_env(settings, OPS_KNOBS, FOLDFLOW_TASK_CLAIM_IDLE_MS="500")
    first = spawn(["activities", "--module", "tests.support.ops_handlers"], env, tmp_path / "a1.log")
    second = None
    try:
        iid = start_slow(settings, marker, sleep=60)
        wait_for_file(Path(f"{marker}.1.started"))
        first.send_signal(signal.SIGTERM)
        # the second signal comes once the first one is being handled (the drain has begun)
        wait_for(lambda: "a second signal exits at once" in (tmp_path / "a1.log").read_text(errors="replace"), 10,
                 "the first SIGTERM starts the drain")
        first.send_signal(signal.SIGTERM)
        code, took = exit_within(first, 5)
        assert code == 130 and took < 3
        # The unacknowledged task is redelivered to the next worker and the instance completes.
        second = spawn(["activities", "--module", "tests.support.ops_handlers"], env, tmp_path / "a2.log")
        assert status_of(settings, iid, 30) == "completed"
        assert Path(f"{marker}.1.redelivered").exists()
    finally:
        stop(first)
        if second is not None:
            stop(second)


def test_drain_limit_bounds_shutdown_and_work_is_redelivered(settings: Settings, tmp_path: Path,
                                                             engine_proc: Any) -> None:
    marker = tmp_path / "slow"
    env = foldflow_env(settings, OPS_KNOBS, FOLDFLOW_TASK_CLAIM_IDLE_MS="500", FOLDFLOW_SHUTDOWN_TIMEOUT_MS="700")
    first = spawn(["activities", "--module", "tests.support.ops_handlers"], env, tmp_path / "a1.log")
    second = None
    try:
        iid = start_slow(settings, marker, sleep=60)
        wait_for_file(Path(f"{marker}.1.started"))
        first.send_signal(signal.SIGTERM)
        code, took = exit_within(first, 10)
        assert code == 1 and took < 5, (tmp_path / "a1.log").read_text()
        assert "did not finish within" in (tmp_path / "a1.log").read_text()
        second = spawn(["activities", "--module", "tests.support.ops_handlers"], env, tmp_path / "a2.log")
        assert status_of(settings, iid, 30) == "completed"
    finally:
        stop(first)
        if second is not None:
            stop(second)


def test_engine_worker_sigterm_releases_partitions_and_heartbeat(settings: Settings, tmp_path: Path) -> None:
    proc = spawn(["worker", "--consumer", "eng-1"], foldflow_env(settings, OPS_KNOBS), tmp_path / "w.log")
    keys = Keys(settings.prefix, settings.partitions)

    async def leases() -> tuple[int, int]:
        r = aioredis.Redis.from_url(settings.redis_url)
        try:
            held = sum([await r.get(keys.lease(p)) == b"eng-1" for p in range(settings.partitions)])
            return held, int(await r.exists(f"{settings.prefix}:hb:eng-1"))
        finally:
            await r.aclose()

    try:
        wait_for(leases, 20, "eng-1 holds every lease and heartbeats", ok=lambda v: v == (settings.partitions, 1))
        proc.send_signal(signal.SIGTERM)
        code, took = exit_within(proc, 10)
        assert code == 0 and took < 5
        assert run(leases()) == (0, 0)  # handed over at once, not after the TTL; gone from `top`
    finally:
        stop(proc)
