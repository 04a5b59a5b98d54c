"""Per-service limits under the roles' Redis ACL users (deploy/acl/users.acl): the
API (ff-api) sets, reads (limits.lua's usage) and lifts limits; an activity worker
(ff-activities) reads them, takes, renews and releases permits and tokens, and keeps
a waiting task's entry its own (touch_task.lua: XPENDING, XCLAIM); `stuck` in an
engine worker (ff-engine) reads why a task waits. Nothing is refused (no NOPERM)."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from engine.store.keys import Keys
from engine.store.limits import LimitStore, limits_runner, parse_limits, waiting_reason
from tests.e2e.test_security import AclServer, acl_server  # noqa: F401  (the fixture)
from tests.support.poll import run

pytestmark = pytest.mark.redis
KEYS = Keys("ff", 8)


def _store(server: AclServer, role: str) -> LimitStore:
    return LimitStore(limits_runner(aioredis.Redis.from_url(server.url(role))), KEYS)


def test_every_role_does_its_part_of_limits_under_its_acl_user(acl_server: AclServer) -> None:  # noqa: F811
    root = acl_server.root()
    stream = KEYS.tasks(0, "acl-limited")
    root.xgroup_create(stream, "activities", id="0", mkstream=True)
    entry = str(root.xadd(stream, {"task_id": "t-wait"}), "ascii")  # type: ignore[arg-type]
    root.xreadgroup("activities", "worker-1", {stream: ">"})

    async def go() -> None:
        api, worker, engine = (_store(acl_server, r) for r in ("api", "activities", "engine"))
        await api.put("acl-limited", parse_limits({"in_flight": 1, "rate": {"limit": 5, "per": "1m"}}))
        limits = await worker.get("acl-limited")
        assert limits is not None and await worker.version() == 1 and list(await worker.all()) == ["acl-limited"]
        assert await worker.acquire("acl-limited", "t-run", limits, b"{}", 50) == (0, "")
        await worker.renew("acl-limited", "t-run", limits.lease_ms)
        assert (await worker.acquire("acl-limited", "t-wait", limits, b'{"step": "s"}', 50))[1] == "in_flight"
        assert await worker.touch(stream, "activities", "worker-1", entry)
        assert not await worker.touch(stream, "activities", "worker-2", entry), "not worker-2's: left alone"
        why = await waiting_reason(engine, "acl-limited", "t-wait")
        assert why is not None and "at its in-flight limit (1)" in why
        usage = await api.usage("acl-limited", limits)
        assert (usage.in_flight, usage.waiting_in_flight) == (1, 1)
        await worker.release("acl-limited", "t-run")
        await worker.unwait("acl-limited", "t-wait")
        await worker.runner.load_scripts()  # what the worker's prepare() does
        assert await api.remove("acl-limited")
        for store in (api, worker, engine):
            await store.redis.aclose()

    try:
        run(go())
        log = root.acl_log()
        assert not [e for e in log if "limit" in str(e.get("object", "")) or "limit" in str(e.get("context", ""))
                    or e.get("username") in ("ff-api", "ff-activities", "ff-engine")], log
    finally:
        root.delete(stream, KEYS.limit_configs, KEYS.limit_version, *KEYS.limit_keys("acl-limited"))
        root.close()
