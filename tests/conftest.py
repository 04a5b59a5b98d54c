"""Shared fixtures and the tiers.

The tests are in tiers, one folder each: ``unit`` (pure code and fakeredis: no
redis-server, seconds), ``contract`` (suites run on fakeredis and on a real
redis-server; the real parameters carry the ``redis`` marker), ``e2e`` (real
redis-server, real processes) and ``faults`` (kills, stalls, Redis restarts, clusters).
Every test of ``e2e`` and ``faults``, and every test that uses the ``redis_url``
fixture, is marked ``redis`` here, so ``pytest -m "not redis"`` never starts a
redis-server. Shared plumbing is in ``tests/support``.

Real-Redis tests use REDIS_URL when set, else a redis-server the session starts on a
free loopback port; without either they skip locally and fail in CI (CI=true), so a
missing server can never pass as green (``tests.support.tools.require_tool``)."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import fakeredis
import pytest
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.config import Settings  # noqa: E402
from engine.dev.embedded import RedisServer  # noqa: E402
from tests.support.tools import EXAMPLES, require_redis_server  # noqa: E402

TESTS = Path(__file__).resolve().parent
REDIS_TIERS = ("e2e", "faults")  # every test in these folders needs a real redis-server
NO_REDIS_TIERS = ("unit",)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    require_redis_server("and REDIS_URL is unset; .ci/run installs one")
    server = RedisServer().start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server_bin() -> str:
    """For tests that start redis-servers of their own (REDIS_URL does not help them):
    the binary, or a skip locally and a failure under CI."""
    return require_redis_server()


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


@pytest.fixture(params=[pytest.param("real", marks=pytest.mark.redis), "fake"])
def cluster_backend(request: pytest.FixtureRequest, prefix: str) -> tuple[Callable[[], aioredis.Redis], Settings]:
    # Breakers off unless a test is about them: a burst of simulated failures would open one.
    base = dict(prefix=prefix, partitions=4, block_ms=50, timer_poll_ms=20, claim_idle_ms=1_000, breaker_threshold=0)
    if request.param == "real":
        url = request.getfixturevalue("redis_url")
        return (lambda: aioredis.Redis.from_url(url)), Settings(redis_url=url, **base)  # type: ignore[arg-type]
    server = fakeredis.FakeServer()
    return (lambda: fakeredis.FakeAsyncRedis(server=server)), Settings(**base)  # type: ignore[arg-type]


def _tier(item: pytest.Item) -> str | None:
    try:
        rel = Path(str(item.path)).resolve().relative_to(TESTS)
    except ValueError:
        return None
    return rel.parts[0] if len(rel.parts) > 1 else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Markers by tier (see the module docstring); long fault variants (@pytest.mark.slow)
    run only with FOLDFLOW_SLOW=1 or `-m slow`."""
    for item in items:
        tier = _tier(item)
        needs_redis = "redis_url" in getattr(item, "fixturenames", ())
        if tier in NO_REDIS_TIERS and (needs_redis or item.get_closest_marker("redis")):
            raise pytest.UsageError(f"{item.nodeid}: tests/{tier} must not need a redis-server; move it to a tier "
                                    "that has one (contract, e2e, faults)")
        if (tier in REDIS_TIERS or needs_redis) and not item.get_closest_marker("redis"):
            item.add_marker(pytest.mark.redis)
    if os.environ.get("FOLDFLOW_SLOW") == "1" or "slow" in (config.getoption("markexpr", "") or ""):
        return
    skip = pytest.mark.skip(reason="long variant: set FOLDFLOW_SLOW=1 or pass -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
