"""Durability modes: WAIT for replicas after each batch of writes, and a
refusal to run without appendfsync always when the deployment asks for it."""

from __future__ import annotations

from typing import Any

import pytest

from engine.config import Settings
from engine.dev.embedded import RedisServer
from engine.errors import ConfigError
from engine.store.connection import connect
from engine.workers.engine import EngineWorker
from tests.contract.test_language import _flow, echo_services
from tests.support.helpers import Cluster
from tests.support.poll import eventually, run
from tests.support.tools import require_tool

pytestmark = [pytest.mark.redis, pytest.mark.usefixtures("redis_server_bin")]  # starts its own redis-servers


def _settings(url: str, **kw: Any) -> Settings:
    return Settings(redis_url=url, prefix="dur", partitions=2, block_ms=50, timer_poll_ms=20, breaker_threshold=0,
                    **kw)


def test_require_fsync_always_refuses_a_weaker_redis() -> None:
    with RedisServer() as plain, RedisServer(None, "--appendonly", "yes", "--appendfsync", "always") as strict:
        async def go() -> None:
            weak = EngineWorker(connect(plain.url), _settings(plain.url, require_fsync_always=1))
            with pytest.raises(ConfigError, match="appendonly=no appendfsync=everysec"):
                await weak.prepare()
            ok = EngineWorker(connect(strict.url), _settings(strict.url, require_fsync_always=1))
            await ok.prepare()  # no error

        run(go())


def test_wait_for_replicas() -> None:
    with RedisServer() as primary:
        with RedisServer(None, "--replicaof", "127.0.0.1", str(primary.port)) as replica:
            client = connect(replica.url)
            async def link_up() -> bool:
                return bool((await client.info("replication")).get("master_link_status") == "up")

            run(eventually(link_up, 10, "the replica's link to its primary is up"))
            for replicas, expect_short in ((1, False), (2, True)):
                settings = _settings(primary.url, wait_replicas=replicas, wait_timeout_ms=50)

                async def scenario() -> tuple[int, int]:
                    async with Cluster(lambda: connect(primary.url), settings, echo_services()) as c:
                        await c.client.register(_flow("durable", [{"name": "a", "type": "service_call",
                                                                   "service": "echo"}]))
                        iid = await c.client.start("durable", {})
                        assert (await c.client.wait(iid)).status == "completed"
                        short = sum(w.store.under_replicated for w in c.workers) + \
                            c.activities.store.under_replicated
                        return short, await connect(replica.url).xlen(c.client.keys.instance(iid))

                short, replicated_events = run(scenario())
                assert (short > 0) == expect_short, (replicas, short)
                assert replicated_events > 0  # the replica holds the history


def test_wait_replicas_is_refused_on_cluster() -> None:
    require_tool("redis-cli", "a Redis Cluster is created with redis-cli --cluster")
    from engine.dev.embedded import RedisClusterServer

    with RedisClusterServer(3, 0) as cluster:
        async def go() -> None:
            worker = EngineWorker(connect(cluster.url), _settings(cluster.url, wait_replicas=1))
            with pytest.raises(ConfigError, match="not supported on Redis Cluster"):
                await worker.prepare()

        run(go())
