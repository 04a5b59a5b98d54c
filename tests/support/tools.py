"""Where the tests live, what they need from the machine, and how they start foldflow
processes.

- ``require_tool(name, why)``: a tool a test needs (redis-server, openssl, promtool, ...);
  missing, the test skips locally and FAILS under CI (``CI`` set), so a missing tool can
  never pass as green in CI.
- ``require_redis_server()``: the same for redis-server, for every test that starts one.
- ``foldflow_env(...)``: the one environment builder for ``python -m engine.ops.cli``
  subprocesses; ``spawn(...)`` starts one with its output in a log file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from engine.config import Settings
from engine.dev.embedded import RedisClusterServer

ROOT = Path(__file__).resolve().parent.parent.parent
TESTS = ROOT / "tests"
EXAMPLES = ROOT / "engine" / "dev" / "examples"

# Knob sets for worker processes: short leases, blocks and polls so the tests move fast.
WORKER_KNOBS: dict[str, str] = {
    "FOLDFLOW_LEASE_MS": "1000",
    "FOLDFLOW_CLAIM_IDLE_MS": "1000",
    "FOLDFLOW_BLOCK_MS": "100",
    "FOLDFLOW_TIMER_POLL_MS": "50",
}
# The fault tests: breakers off (bursts of simulated failures would open them), quick heartbeats.
FAULT_KNOBS: dict[str, str] = {
    **WORKER_KNOBS,
    "FOLDFLOW_TASK_CLAIM_IDLE_MS": "2000",
    "FOLDFLOW_BREAKER_THRESHOLD": "0",
    "FOLDFLOW_HEARTBEAT_MS": "200",
    # a bound on a hang, not the expectation: one drain under the full suite on 2 shared cores took over 5 s
    "FOLDFLOW_SHUTDOWN_TIMEOUT_MS": "15000",
}
# The crash tests: worker knobs, breakers off.
CRASH_KNOBS: dict[str, str] = {**WORKER_KNOBS, "FOLDFLOW_BREAKER_THRESHOLD": "0"}
# The operations tests: worker knobs, heartbeats a scrape can watch move.
OPS_KNOBS: dict[str, str] = {**WORKER_KNOBS, "FOLDFLOW_HEARTBEAT_MS": "300"}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def missing(why: str) -> None:
    """A test cannot run here: skip locally, fail under CI."""
    if in_ci():
        pytest.fail(f"CI must run this test: {why}", pytrace=False)
    pytest.skip(why)


def require_tool(name: str, why: str = "") -> str:
    """The path of ``name`` on PATH; without it, skip locally and fail under CI."""
    path = shutil.which(name)
    if path is None:
        missing(f"{name} is not on PATH" + (f" ({why})" if why else ""))
    assert path is not None
    return path


def require_redis_server(why: str = "this test starts its own redis-server") -> str:
    return require_tool("redis-server", why)


def foldflow_env(settings: Settings | None = None, *knobs: Mapping[str, str], url: str | None = None,
                 prefix: str | None = None, partitions: int | None = None, drop: Iterable[str] = (),
                 **extra: str) -> dict[str, str]:
    """The environment of a foldflow subprocess: this one's, the repo on PYTHONPATH, the
    Redis URL, prefix and partitions (from ``settings`` unless given), then each knob set
    in order, then ``extra``; the names in ``drop`` are removed (e.g. ``REDIS_URL``)."""
    env = {k: v for k, v in os.environ.items() if k not in set(drop)}
    env["PYTHONPATH"] = str(ROOT)
    url = url if url is not None else (settings.redis_url if settings else None)
    prefix = prefix if prefix is not None else (settings.prefix if settings else None)
    partitions = partitions if partitions is not None else (settings.partitions if settings else None)
    if url is not None:
        env["REDIS_URL"] = url
    if prefix is not None:
        env["FOLDFLOW_PREFIX"] = prefix
    if partitions is not None:
        env["FOLDFLOW_PARTITIONS"] = str(partitions)
    for knob in knobs:
        env.update(knob)
    env.update(extra)
    return env


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``python -m engine.ops.cli *args`` with stdout and stderr appended to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "engine.ops.cli", *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT, cwd=ROOT)


def started_cluster(**kwargs: Any) -> Iterator[RedisClusterServer]:
    """A throwaway Redis Cluster for a fixture to ``yield from`` (stopped after); skipped
    locally, failed under CI, without redis-server and redis-cli."""
    require_redis_server("the cluster tests start a Redis Cluster")
    require_tool("redis-cli", "the cluster tests create the cluster with redis-cli --cluster")
    server = RedisClusterServer(**kwargs).start()
    try:
        yield server
    finally:
        server.stop()
