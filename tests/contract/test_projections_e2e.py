"""The read side end to end: engine, activity and projector workers running
(on fakeredis and a real redis-server); every completed instance is listed,
has its full step history and lifecycle events, and is found by its
correlation id; a rebuild while running reproduces the live read models."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from engine.config import Settings
from engine.store.keys import Keys
from projections import Projector, Queries, Rebuilder
from projections.keys import ViewKeys
from tests.support.helpers import Cluster
from tests.support.poll import eventually, run

N = 12


async def dump_views(redis: aioredis.Redis, settings: Settings) -> dict[str, Any]:
    """Every read-model key of the deployment, by name, with its contents (checkpoints aside)."""
    out: dict[str, Any] = {}
    async for raw in redis.scan_iter(match=f"*{settings.prefix}*:x:*", count=1000):
        key = raw.decode()
        if key.endswith(":x:ckpt"):
            continue
        kind = (await redis.type(key)).decode()
        if kind == "hash":
            out[key] = {k.decode(): v for k, v in (await redis.hgetall(key)).items()}
        elif kind == "zset":
            out[key] = await redis.zrange(key, 0, -1, withscores=True)
        elif kind == "list":
            out[key] = await redis.lrange(key, 0, -1)
    return out


async def start_all(cluster: Cluster, n: int, tag: str, agent_example: bytes) -> list[str]:
    definition, _ = await cluster.client.register(agent_example)
    ids = []
    for i in range(n):
        ctx = {"project_id": "p", "task_id": f"{tag}-{i}", "agent_id": f"a-{i % 3}", "flaky": i % 4 == 0}
        ids.append(await cluster.client.start(definition.name, ctx, instance_id=f"{tag}-{i}",
                                              correlation_id=f"corr-{i % 3}"))
    return ids


def test_demo_instances_are_listed_with_history_and_correlation(
    cluster_backend: tuple[Callable[[], aioredis.Redis], Settings], agent_example: bytes
) -> None:
    factory, settings = cluster_backend

    async def scenario() -> None:
        projector = Projector(factory(), settings)
        await projector.prepare()
        queries = Queries(factory(), settings)
        async with Cluster(factory, settings) as cluster:
            task = asyncio.create_task(projector.run())
            ids = await start_all(cluster, N, "e2e", agent_example)
            await cluster.client.publish("note.posted", {"x": 1}, correlation_id="corr-0")

            async def all_completed() -> bool:
                return await queries.count(status="completed") == N

            await eventually(all_completed, timeout=60)
            page = await queries.executions(status="completed", workflow="Agent Task Execution", limit=5)
            assert page["count"] == N and len(page["items"]) == 5 and page["next_cursor"]
            seen = [r["id"] for r in page["items"]]
            while page["next_cursor"]:
                page = await queries.executions(status="completed", limit=5, cursor=page["next_cursor"])
                seen += [r["id"] for r in page["items"]]
            assert sorted(seen) == sorted(ids)
            for iid in ids:
                record = await queries.execution(iid)
                state = await cluster.client.state(iid)
                assert record["status"] == "completed" and record["version"] == state.version
                assert record["current_steps"] == [] and record["output"] == state.output
                steps = await queries.steps(iid)
                done = [s["step"] for s in steps if s["status"] == "completed"]
                assert done == ["task_preparation", "agent_assignment", "execution_monitoring", "result_processing"]
                assert all(s["duration_ms"] is not None for s in steps)
                names = [e["type"] for e in await queries.lifecycle(iid)]
                assert names[0] == "workflow.started" and names[-1] == "workflow.completed"
                assert names.count("workflow.step_completed") == 4
            corr = await queries.correlation("corr-0")
            assert sorted(e["id"] for e in corr["executions"]) == sorted(ids[0::3])
            assert any(e["type"] == "note.posted" for e in corr["events"])
            assert any(e["type"] == "agent.task_completed" for e in corr["events"]) is False
            assert corr["timeline"][0]["timestamp"] <= corr["timeline"][-1]["timestamp"]

            # rebuild while running reproduces the live read models exactly
            live = await dump_views(queries.redis, settings)
            r = factory()
            vk = ViewKeys(Keys(settings.prefix, settings.partitions))
            await r.hset(vk.view(0, "junk"), "executions", b"{}")  # noise a rebuild must leave alone
            for iid in ids[:4]:  # damage some views; the rebuild repairs them
                p = Keys(settings.prefix, settings.partitions).partition(iid)
                await r.hset(vk.view(p, iid), "executions", orjson.dumps({"status": "failed", "workflow": "W",
                                                                           "created_ms": 1}))
                await r.zadd(vk.index(p, status="failed"), {iid: 1})
                await r.delete(vk.lifecycle(p, iid))
            await r.hdel(vk.view(0, "junk"), "executions")
            stats = await Rebuilder(r, settings).rebuild(["executions", "steps", "lifecycle", "correlation"])
            assert stats["instances"] == N
            assert await dump_views(queries.redis, settings) == live
            await r.aclose()
            projector.stop()
            await task
        await queries.close()
        await projector.redis.aclose()

    run(scenario())


@pytest.mark.redis
def test_cli_verbs_status_trim_and_errors(settings: Settings, agent_example: bytes) -> None:
    from tests.e2e.test_cli import cli, ok

    async def scenario() -> None:
        factory = lambda: aioredis.Redis.from_url(settings.redis_url)  # noqa: E731
        projector = Projector(factory(), settings)
        await projector.prepare()
        queries = Queries(factory(), settings)
        async with Cluster(factory, settings) as cluster:
            task = asyncio.create_task(projector.run())
            ids = await start_all(cluster, 4, "cli", agent_example)

            async def done() -> bool:
                return await queries.count(status="completed") == 4

            await eventually(done, timeout=60)
            projector.stop()
            await task
        await queries.close()
        await projector.redis.aclose()

        def call(*args: str) -> Any:
            return orjson.loads(ok(await_cli(*args)))

        def await_cli(*args: str) -> Any:
            return cli(settings, *args)

        page = call("executions", "list", "--status", "completed", "--since", "1h", "--limit", "3")
        assert page["count"] == 4 and len(page["items"]) == 3
        rest = call("executions", "list", "--status", "completed", "--cursor", page["next_cursor"])
        assert {r["id"] for r in page["items"] + rest["items"]} == set(ids)
        assert call("executions", "show", ids[0])["status"] == "completed"
        assert len(call("executions", "steps", ids[0])) >= 4
        assert call("executions", "events", ids[0])[-1]["type"] == "workflow.completed"
        assert {e["id"] for e in call("correlation", "show", "corr-0")["executions"]} == {ids[0], ids[3]}
        table = ok(await_cli("executions", "list", "--table"))
        assert "STATUS" in table.splitlines()[0] and ids[0] in table
        assert "STEP" in ok(await_cli("executions", "steps", ids[0], "--table"))
        rows = call("projector", "status")
        assert {r["projection"] for r in rows} == {"executions", "steps", "lifecycle", "correlation"}
        assert all(r["lag_entries"] == 0 and r["lag_seconds"] == 0 for r in rows), rows
        assert "LAG_SECONDS" in ok(await_cli("projector", "status", "--table"))
        before = call("executions", "steps", ids[1])
        assert call("projector", "rebuild", "all")["instances"] == 4
        assert call("executions", "steps", ids[1]) == before
        # everything was processed by every group: the feeds are trimmed, the views stay
        removed = call("projector", "trim")["removed"]
        assert sum(removed.values()) > 0
        assert call("executions", "show", ids[1])["status"] == "completed"

        missing = await_cli("executions", "show", "nope")
        assert missing.returncode == 1 and "not found" in missing.stderr and "Traceback" not in missing.stderr
        missing = await_cli("correlation", "show", "nope")
        assert missing.returncode == 1 and "not found" in missing.stderr
        bad = await_cli("executions", "list", "--status", "bogus")
        assert bad.returncode == 2 and "unknown status" in bad.stderr
        bad = await_cli("executions", "list", "--since", "yesterday")
        assert bad.returncode == 2 and "invalid time" in bad.stderr
        bad = await_cli("projector", "rebuild", "nope")
        assert bad.returncode == 2 and "unknown projection" in bad.stderr

    run(scenario())


@pytest.mark.redis
def test_trim_keeps_what_a_group_still_needs(settings: Settings) -> None:
    from projections import trim_feeds
    from projections.catalog import PROJECTIONS
    from projections.keys import group_name

    async def scenario() -> None:
        redis = aioredis.Redis.from_url(settings.redis_url)
        keys = Keys(settings.prefix, settings.partitions)
        feed = keys.feed(0)
        ids = [await redis.xadd(feed, {"n": i}) for i in range(10)]
        assert await trim_feeds(redis, keys) == {}  # no projection groups yet: nothing is trimmed
        for name in PROJECTIONS:
            await redis.xgroup_create(feed, group_name(name), id="0")
        for name in PROJECTIONS:  # every group has read all ten ...
            await redis.xreadgroup(group_name(name), "c", {feed: ">"}, count=10)
            await redis.xack(feed, group_name(name), *ids)
        await redis.xack(feed, group_name("steps"), *ids[:3])
        # ... but "steps" still has ids[3] pending in a re-read: simulate by a fresh unacked entry
        await redis.xgroup_setid(feed, group_name("steps"), id=ids[3])
        await redis.xreadgroup(group_name("steps"), "c", {feed: ">"}, count=1)  # ids[4] pending now
        await trim_feeds(redis, keys)
        remaining = [e[0] for e in await redis.xrange(feed)]
        assert remaining[0] == ids[4] and len(remaining) == 6
        await redis.xack(feed, group_name("steps"), ids[4])
        await redis.xreadgroup(group_name("steps"), "c", {feed: ">"}, count=10)
        await redis.xack(feed, group_name("steps"), *ids[5:])
        await trim_feeds(redis, keys)
        assert [e[0] for e in await redis.xrange(feed)] == [ids[-1]]  # the last delivered stays
        await redis.aclose()

    run(scenario())
