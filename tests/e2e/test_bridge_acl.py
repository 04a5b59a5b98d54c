"""The bridge's Redis user (deploy/acl/users.acl, ff-bridge) may do its job and no more:
read its request streams and the feeds in its groups, dead-letter, publish monitoring
updates, write run records, register plans and send commands; never write history, a
feed, a task stream or the partition count, nor add requests of its own."""

from __future__ import annotations

import pytest
import redis

from tests.e2e.test_security import AclServer, acl_server  # noqa: F401 - the module's ACL'd redis-server

pytestmark = pytest.mark.redis


def test_the_bridge_user_may_do_its_job_and_no_more(acl_server: AclServer) -> None:  # noqa: F811
    bridge = acl_server.sync("bridge")
    assert bridge.xadd("ff:workflow.monitoring.updates", {"data": "{}"})
    assert bridge.xadd("ff:bridge:dlq", {"reason": "r"})
    assert bridge.xadd("{ff:3}:inbox", {"type": "cancel", "id": "x", "data": "{}"})
    assert bridge.hsetnx("{ff:3}:run:r-1", "run_id", "r-1") in (0, 1)
    assert bridge.xgroup_create("ff:workflow.execution.requests", "bridge", id="0", mkstream=True)
    assert bridge.xrange("{ff:3}:i:r-1") == []
    refused = [
        lambda: bridge.xadd("ff:workflow.execution.requests", {"data": "{}"}),  # it reads requests, never adds
        lambda: bridge.xadd("{ff:3}:i:r-1", {"type": "x"}),  # history
        lambda: bridge.xadd("{ff:3}:feed", {"type": "x"}),
        lambda: bridge.xadd("{ff:3}:tasks:extractor", {"x": "1"}),
        lambda: bridge.hset("ff:meta", "partitions", "9"),
        lambda: bridge.hset("{ff:3}:x:i:r-1", "executions", "{}"),  # the read models are the projector's
        lambda: bridge.execute_command("CONFIG", "SET", "maxmemory-policy", "allkeys-lru"),
        lambda: bridge.execute_command("FLUSHALL"),
    ]
    for attempt in refused:
        with pytest.raises(redis.exceptions.NoPermissionError):
            attempt()
