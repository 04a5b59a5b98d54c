"""The read side end to end: engine, activity and projector workers running
(on fakeredis and a real redis-server); every completed instance is listed,
has its full step history and lifecycle events, and is found by its
correlation id; a rebuild while running reproduces the live read models."""

from __future__ import annotations

import asyncio
from typing import Any, Callable

import orjson
import pytest
import redis.asyncio as aioredis

from engine.config import Settings
from engine.keys import Keys
from projections import Projector, Queries, Rebuilder
from projections.keys import ViewKeys

from .conftest import eventually, run
from .helpers import Cluster

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
