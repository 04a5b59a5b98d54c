"""Redis misconfiguration and loss of state, each against a redis-server this
test starts for itself: an evicting maxmemory-policy is refused at start, a
user without CONFIG is warned about, a destroyed group or flushed database
(NOGROUP) raises an alarm and recovers, and SCRIPT FLUSH under load is absorbed."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis

from engine.config import Settings
from engine.core.model import Task
from engine.dev.embedded import RedisServer
from engine.errors import ConfigError
from engine.store.keys import ACTIVITY_GROUP, ENGINE_GROUP, ROUTER_GROUP, Keys
from engine.workers.activities import ActivityWorker, Registry
from engine.workers.engine import EngineWorker
from projections.runner import Projector
from tests.support.helpers import Cluster, check_history
from tests.support.poll import eventually, run
from tests.support.tools import ROOT, foldflow_env, require_redis_server, require_tool

pytestmark = pytest.mark.redis


def _server(*extra: str) -> RedisServer:
    require_redis_server()
    return RedisServer(None, *extra).start()


@pytest.fixture
def lru() -> Iterator[RedisServer]:
    server = _server("--maxmemory-policy", "allkeys-lru")
    yield server
    server.stop()


@pytest.fixture
def own() -> Iterator[RedisServer]:
    server = _server()
    yield server
    server.stop()


def _settings(url: str, prefix: str) -> Settings:
    return Settings(redis_url=url, prefix=prefix, partitions=4, block_ms=50, timer_poll_ms=20, claim_idle_ms=1_000,
                    breaker_threshold=0)


def _registry(**special: Any) -> Registry:
    registry = Registry()
    for service in ("planning-system", "agent-orchestrator", "project-coordinator"):
        handler = special.get(service.replace("-", "_"), lambda task: {"ok": True, "endpoint": task.endpoint})
        registry.register(service, None, handler)
    return registry


# -- maxmemory-policy --------------------------------------------------------------
def test_every_role_refuses_an_evicting_redis(lru: RedisServer, prefix: str) -> None:
    settings = _settings(lru.url, prefix)

    async def scenario() -> None:
        r = aioredis.Redis.from_url(lru.url)
        try:
            for role in (EngineWorker(r, settings), ActivityWorker(r, settings, registry=_registry()),
                         Projector(r, settings)):
                with pytest.raises(ConfigError, match="maxmemory-policy is allkeys-lru.*Set it to noeviction"):
                    await role.prepare()
            assert await r.exists(Keys(prefix, 4).meta) == 0  # refused before writing anything
        finally:
            await r.aclose()

    run(scenario())
    env = foldflow_env(url=lru.url, prefix=prefix)
    procs = [subprocess.Popen([sys.executable, "-m", "engine.ops.cli", *verb], env=env, cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for verb in (["worker"], ["activities", "--module", "engine.dev.demo_handlers"], ["projector"])]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 2, err
        assert "maxmemory-policy is allkeys-lru" in err and "noeviction" in err and "Traceback" not in err


def test_a_user_without_config_is_warned_about_and_starts(own: RedisServer, prefix: str,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    settings = _settings(own.url, prefix)

    async def scenario() -> None:
        admin = aioredis.Redis.from_url(own.url)
        await admin.execute_command("ACL", "SETUSER", "noconfig", "on", ">pw", "~*", "&*", "+@all", "-config")
        await admin.execute_command("ACL", "SETUSER", "blind", "on", ">pw", "~*", "&*", "+@all", "-config", "-info")
        url = f"redis://{{}}:pw@127.0.0.1:{own.port}/0"
        try:
            # CONFIG refused: the policy is read from INFO instead, and it is fine
            r = aioredis.Redis.from_url(url.format("noconfig"))
            with pytest.raises(Exception, match="NOPERM|no permissions"):
                await r.config_get("maxmemory-policy")
            await EngineWorker(r, settings).prepare()
            # CONFIG and INFO refused: a warning, and the worker starts
            caplog.clear()
            blind = aioredis.Redis.from_url(url.format("blind"))
            with caplog.at_level(logging.WARNING, logger="foldflow.preflight"):
                await ActivityWorker(blind, settings, registry=_registry()).prepare()
            assert any("could not read maxmemory-policy" in r.message for r in caplog.records)
            # ... and INFO still catches an evicting policy when CONFIG is refused
            await admin.config_set("maxmemory-policy", "volatile-ttl")
            with pytest.raises(ConfigError, match="volatile-ttl"):
                await EngineWorker(r, settings).prepare()
            await r.aclose()
            await blind.aclose()
        finally:
            await admin.aclose()

    run(scenario())


# -- NOGROUP: destroyed groups, flushed streams ----------------------------------------
def _readers(c: Cluster) -> list[Any]:
    return [r for w in c.workers for r in (w.reader, w.router.reader, w.relay.reader)] + [c.activities.reader]


async def _run_some(c: Cluster, name: str, n: int, tag: str) -> list[str]:
    ids = [await c.client.start(name, {"project_id": "p", "task_id": f"{tag}-{i}", "agent_id": "a"})
           for i in range(n)]
    for iid in ids:
        assert (await c.client.wait(iid, timeout=30)).status == "completed", await c.client.status(iid)
    return ids


def test_destroyed_groups_and_a_flushed_database_raise_an_alarm_and_recover(
    own: RedisServer, prefix: str, agent_example: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(own.url, prefix)
    keys = Keys(prefix, 4)

    async def scenario() -> None:
        async with Cluster(lambda: aioredis.Redis.from_url(own.url), settings, registry=_registry()) as c:
            r = c.client.redis
            definition, _ = await c.client.register(agent_example)
            before = await _run_some(c, definition.name, 5, "a")

            # every group the workers read, destroyed under them (the streams stay)
            for p in range(keys.partitions):
                await r.xgroup_destroy(keys.inbox(p), ENGINE_GROUP)
                for queue in ("planning-system", "agent-orchestrator", "project-coordinator"):
                    if await r.exists(keys.tasks(p, queue)):
                        await r.xgroup_destroy(keys.tasks(p, queue), ACTIVITY_GROUP)
            await r.xgroup_destroy(keys.events, ROUTER_GROUP)
            after_destroy = await _run_some(c, definition.name, 5, "b")

            async def alarmed() -> int:
                return sum(x.nogroup_recoveries for x in _readers(c))

            destroyed = await eventually(alarmed)
            # recreated at 0: the old commands came again and changed nothing
            for iid in before + after_destroy:
                check_history(await c.client.history(iid))

            # the whole database gone: streams, groups, definitions
            await r.flushdb()
            await c.client.register(agent_example)
            await _run_some(c, definition.name, 5, "c")
            assert await alarmed() > destroyed
            assert not any(t.done() for t in c.tasks)  # no crash, no restart loop
            # bounded: one recovery per group and stream lost, not one per read
            assert await alarmed() <= 2 * (3 * keys.partitions * 2 + 2 + keys.partitions * 3)

    with caplog.at_level(logging.ERROR, logger="foldflow.consumer"):
        run(scenario())
    alarms = [r for r in caplog.records if r.levelno == logging.ERROR and "ALARM" in r.message]
    assert alarms and all("recreated at 0" in r.message for r in alarms)


# -- SCRIPT FLUSH under load --------------------------------------------------------------
def test_script_flush_under_load_is_absorbed(own: RedisServer, prefix: str, agent_example: bytes) -> None:
    """A handler flushes the script cache on every call while 40 instances run
    on two engine workers: every append, report and timer script meets NOSCRIPT
    at some point, in single calls and in pipelines, and everything completes."""
    settings = msgspec.structs.replace(_settings(own.url, prefix), batch_size=16)
    flusher = aioredis.Redis.from_url(own.url)
    flushes = 0

    async def flushing(task: Task) -> dict[str, Any]:
        nonlocal flushes
        await flusher.script_flush()
        flushes += 1
        return {"ok": True, "endpoint": task.endpoint}

    registry = _registry(agent_orchestrator=flushing)

    async def scenario() -> None:
        async with Cluster(lambda: aioredis.Redis.from_url(own.url), settings, registry=registry) as c:
            definition, _ = await c.client.register(agent_example)
            ids = await asyncio.gather(*(c.client.start(definition.name, {
                "project_id": "p", "task_id": f"t-{i}", "agent_id": "a", "flaky": i % 4 == 0}) for i in range(40)))
            for iid in ids:
                state = await c.client.wait(iid, timeout=60)
                assert state.status == "completed", await c.client.status(iid)
                check_history(await c.client.history(iid))
            assert sum(w.stats.dead_lettered for w in c.workers) == 0
            for p in range(4):
                assert await c.client.redis.xlen(Keys(prefix, 4).dlq(p)) == 0
            errors = await flusher.info("errorstats")
            assert errors.get("errorstat_NOSCRIPT", {}).get("count", 0) >= 5, errors  # NOSCRIPT was met, often
        await flusher.aclose()

    run(scenario())
    assert flushes >= 40


# -- the same on Redis Cluster: every primary is asked; per-stream polling reads recover too --
def test_on_a_cluster_every_primary_is_checked_and_polling_reads_recover(prefix: str) -> None:
    from engine.dev.embedded import RedisClusterServer
    from engine.runtime.consume import GroupReader
    from engine.runtime.preflight import preflight
    from engine.store.connection import connect

    require_redis_server("this test starts a Redis Cluster")
    require_tool("redis-cli", "a Redis Cluster is created with redis-cli --cluster")
    cluster = RedisClusterServer(masters=3).start()
    keys = Keys(prefix, 4)

    async def scenario() -> None:
        r = connect(cluster.url)
        try:
            await preflight(r)
            node = r.get_primaries()[1]
            await r.config_set("maxmemory-policy", "allkeys-lru", target_nodes=node)
            with pytest.raises(ConfigError, match="allkeys-lru"):
                await preflight(r)
            await r.config_set("maxmemory-policy", "noeviction", target_nodes=node)

            streams = [keys.inbox(p) for p in range(4)]
            for s in streams:
                await r.xgroup_create(s, ENGINE_GROUP, id="0", mkstream=True)
                await r.xadd(s, {"n": s})
            await r.xgroup_destroy(streams[0], ENGINE_GROUP)
            await r.delete(streams[1])
            reader = GroupReader(r, ENGINE_GROUP, "c", streams)
            first = await reader.read(10, 100)
            assert {e[0] for e in first} == set(streams[2:]) and reader.nogroup_recoveries == 2
            # recreated at 0: what was still in the destroyed group's stream comes now
            assert [e[0] for e in await reader.read(10, 100)] == [streams[0]]
        finally:
            await r.aclose()

    try:
        run(scenario())
    finally:
        cluster.stop()
