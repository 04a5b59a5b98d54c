"""Schedules under the ACL users of deploy/acl/users.acl: the API's user (ff-api) creates,
shows, triggers, backfills, pauses and deletes schedules; the engine worker's user
(ff-engine) claims and advances them and starts their runs; neither meets NOPERM, and the
client's user may not touch schedules."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.exceptions import NoPermissionError

from engine.config import Settings
from engine.core.schedules import Schedule
from engine.store.catalog import Catalog
from engine.store.connection import connect
from engine.store.events import Store
from engine.store.keys import Keys
from engine.store.schedule_ops import ScheduleOps
from engine.store.schedules import ScheduleStore
from engine.workers.engine import EngineWorker
from tests.e2e.test_security import AclServer, acl_server  # noqa: F401  (the module's fixture)
from tests.support.fault_support import TWO_STEPS
from tests.support.poll import eventually, run

pytestmark = pytest.mark.redis


def test_api_and_engine_users_run_schedules(acl_server: AclServer) -> None:  # noqa: F811
    keys = Keys("ff", 8)

    async def main() -> None:
        admin, api, engine = (connect(acl_server.url(r)) for r in ("admin", "api", "engine"))
        worker = EngineWorker(engine, Settings(redis_url=acl_server.url("engine"), prefix="ff", partitions=8,
                                               schedule_poll_ms=100, block_ms=100))
        task = asyncio.create_task(worker.run())
        try:
            await Catalog(Store(admin, keys)).register(TWO_STEPS)
            ops = ScheduleOps(ScheduleStore(api, keys), Catalog(Store(api, keys)))
            name = f"acl-{int(time.time() * 1000) % 100000}"
            await ops.create(Schedule(name=name, workflow=TWO_STEPS["name"], every="1s", overlap="allow"))
            started = await eventually(lambda: ops.show(name), timeout=15, what="a start under ff-engine",
                                       ok=lambda v: v.state.counters["started"] >= 1)
            iid = started.state.last_execution_id
            assert iid and iid.startswith(f"{name}@")
            now = int(time.time() * 1000)
            await ops.trigger(name, now)
            await ops.backfill(name, now - 30_000, now - 28_000, now)
            await eventually(lambda: ops.show(name), timeout=15, what="the trigger and backfill",
                             ok=lambda v: v.state.counters["triggered"] == 1 and v.state.counters["backfilled"] >= 2)
            await ops.set_paused(name, True)
            await ops.set_paused(name, False)
            assert (await ops.show(name)).state.last_error == ""
            assert await ops.store.delete(name)
        finally:
            worker.stop()
            await asyncio.wait_for(task, 30)
            for r in (admin, api, engine):
                await r.aclose()
    run(main())
    nopermed = [e for e in acl_server.root().acl_log() if b"sched" in repr(e).encode()]
    assert not nopermed, nopermed


def test_the_client_user_may_not_touch_schedules(acl_server: AclServer) -> None:  # noqa: F811
    client = acl_server.sync("client")
    try:
        with pytest.raises(NoPermissionError):
            client.hset("{ff:sched}:s:evil", "def", "{}")
        with pytest.raises(NoPermissionError):
            client.zadd("{ff:sched}:due", {"evil": 0})
    finally:
        client.close()
