"""Shared fixtures. Real-Redis tests use REDIS_URL when set, else a redis-server
the session starts on a free loopback port; without either they skip locally
and fail in CI (CI=true), so a missing server can never pass as green."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import fakeredis
import pytest
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.config import Settings  # noqa: E402
from engine.dev.embedded import RedisClusterServer, RedisServer  # noqa: E402

EXAMPLES = ROOT / "engine" / "dev" / "examples"
T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 20.0, interval: float = 0.05) -> Any:
    """Poll an async check until it returns a truthy value (no fixed sleeps in tests)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last: {last!r})")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    if not shutil.which("redis-server"):
        if os.environ.get("CI"):
            pytest.fail("CI needs a redis-server (or REDIS_URL); .ci/run installs one")
        pytest.skip("no redis-server on PATH and REDIS_URL unset")
    server = RedisServer().start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def prefix() -> str:
    return f"fft{uuid.uuid4().hex[:10]}"


@pytest.fixture
def settings(prefix: str, redis_url: str) -> Settings:
    # Timing is forced by knobs, not sleeps: short blocks, fast timer polls.
    return Settings(redis_url=redis_url, prefix=prefix, partitions=4, block_ms=50, timer_poll_ms=20,
                    claim_idle_ms=1_000)


@pytest.fixture
def fake_settings(prefix: str) -> Settings:
    return Settings(redis_url="fake://", prefix=prefix, partitions=4, block_ms=20, timer_poll_ms=20,
                    claim_idle_ms=1_000)


@pytest.fixture
def agent_example() -> bytes:
    return (EXAMPLES / "agent-task-execution.json").read_bytes()


@pytest.fixture(params=["real", "fake"])
def cluster_backend(request: pytest.FixtureRequest, prefix: str) -> tuple[Callable[[], aioredis.Redis], Settings]:
    # Breakers off unless a test is about them: a burst of simulated failures would open one.
    base = dict(prefix=prefix, partitions=4, block_ms=50, timer_poll_ms=20, claim_idle_ms=1_000, breaker_threshold=0)
    if request.param == "real":
        url = request.getfixturevalue("redis_url")
        return (lambda: aioredis.Redis.from_url(url)), Settings(redis_url=url, **base)  # type: ignore[arg-type]
    server = fakeredis.FakeServer()
    return (lambda: fakeredis.FakeAsyncRedis(server=server)), Settings(**base)  # type: ignore[arg-type]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Long fault variants (@pytest.mark.slow) run only with FOLDFLOW_SLOW=1 or `-m slow`."""
    if os.environ.get("FOLDFLOW_SLOW") == "1" or "slow" in (config.getoption("markexpr", "") or ""):
        return
    skip = pytest.mark.skip(reason="long variant: set FOLDFLOW_SLOW=1 or pass -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def started_cluster(**kwargs: Any) -> Iterator[RedisClusterServer]:
    """A throwaway Redis Cluster for a fixture to ``yield from`` (stopped after); skipped
    locally, failed under CI, without redis-server and redis-cli."""
    if not (shutil.which("redis-server") and shutil.which("redis-cli")):
        if os.environ.get("CI"):
            pytest.fail("CI needs redis-server and redis-cli for the cluster suite")
        pytest.skip("redis-server/redis-cli not on PATH")
    server = RedisClusterServer(**kwargs).start()
    try:
        yield server
    finally:
        server.stop()
