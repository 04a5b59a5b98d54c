"""Priority lanes on a Redis Cluster (3 masters, no replicas): a lane and the partition's lanes
set share the partition's hash tag, so append.lua registers the lane, creates its group and
XADDs the task in one slot (no CROSSSLOT), and the activity worker's pipelined SMEMBERS and
lane reads work across the masters."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from engine.config import Settings
from engine.dev.embedded import RedisClusterServer
from engine.store.connection import connect
from engine.store.keys import Keys
from engine.store.replies import text
from tests.contract.test_language import _flow, echo_services
from tests.support.helpers import Cluster
from tests.support.poll import run
from tests.support.tools import started_cluster

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterServer]:
    yield from started_cluster(masters=3, replicas=0, node_timeout_ms=2000)


def test_priority_starts_run_on_their_lanes_on_the_cluster(cluster: RedisClusterServer) -> None:
    settings = Settings(redis_url=cluster.url, prefix=f"fl{uuid.uuid4().hex[:8]}", partitions=8, block_ms=50,
                        timer_poll_ms=20, claim_idle_ms=1_000, breaker_threshold=0)
    keys = Keys(settings.prefix, settings.partitions)
    node = redis.Redis(port=cluster.nodes[0].port)
    for p in range(keys.partitions):  # the lanes set and a lane are in the partition's slot
        slots = {node.execute_command("CLUSTER KEYSLOT", k)  # type: ignore[no-untyped-call]
                 for k in (keys.inbox(p), keys.lanes(p), keys.tasks(p, "echo", 9))}
        assert len(slots) == 1, (p, slots)
    node.close()

    async def scenario() -> None:
        async with Cluster(lambda: connect(settings.redis_url), settings, echo_services()) as c:
            await c.client.register(_flow("lanes-c", [{"name": "work", "type": "service_call", "service": "echo"}]))
            urgent = [await c.client.start("lanes-c", {"i": i}, priority=1 + i % 9) for i in range(16)]
            plain = [await c.client.start("lanes-c", {"i": i}) for i in range(4)]
            for iid in urgent + plain:
                assert (await c.client.wait(iid, timeout=30)).status == "completed", iid
            r = connect(settings.redis_url)
            try:
                lanes = set()
                for p in range(keys.partitions):
                    lanes |= {text(m) for m in await r.smembers(keys.lanes(p))}
            finally:
                await r.aclose()
            assert lanes == {keys.tasks(keys.partition(i), "echo", 1 + n % 9) for n, i in enumerate(urgent)}
            assert c.activities.lanes.known.keys() <= lanes

    run(scenario())
