"""Malformed input in every stream the workers read is dead-lettered with a
reason that names the problem, and the loops keep going."""

from __future__ import annotations

from typing import Any

import msgspec

from engine.store.keys import Keys
from tests.support.helpers import Cluster
from tests.support.poll import eventually, run


def _other_partition_id(keys: Keys, p: int) -> str:
    return next(f"elsewhere-{i}" for i in range(1000) if keys.partition(f"elsewhere-{i}") != p)


def test_malformed_commands_are_dead_lettered_and_the_worker_keeps_going(
    cluster_backend: Any, agent_example: bytes
) -> None:
    factory, base = cluster_backend
    settings = msgspec.structs.replace(base, max_payload_bytes=2_000)
    keys = Keys(settings.prefix, settings.partitions)

    async def scenario() -> None:
        async with Cluster(factory, settings) as c:
            c.agents.stop()
            r = c.client.redis
            definition, _ = await c.client.register(agent_example)
            p = keys.partition("nobody-here")
            inbox = keys.inbox(p)
            bad: list[tuple[dict[str, Any], str]] = [
                ({"id": "nobody-here", "data": "{}"}, "missing field 'type'"),
                ({"type": "explode", "id": "nobody-here", "data": "{}"}, "unknown command type 'explode'"),
                ({"type": "start", "id": "nobody-here", "data": "{not json"}, "not valid JSON"),
                ({"type": "start", "id": "nobody-here", "data": '{"workflow": 5}'},
                 "Expected `str`, got `int` - at `$.workflow`"),
                ({"type": "step.completed", "id": "nobody-here", "data": '{"step": "a"}'},
                 "missing required field `attempt`"),
                ({"type": "cancel", "id": "nobody-here", "data": "{}"}, "unknown instance 'nobody-here'"),
                ({"type": "start", "id": "nobody-here", "data": '{"workflow": "x", "context": {"b": "'
                  + "x" * 3000 + '"}}'}, "over the limit of 2000"),
                ({"type": "cancel", "id": "bad id!", "data": "{}"}, "invalid instance id"),
                ({"type": "cancel", "id": _other_partition_id(keys, p), "data": "{}"}, f"not {p}"),
                ({"type": "start", "id": "nobody-here", "data": '{"workflow": "no-such-flow"}'},
                 "unknown workflow 'no-such-flow'"),
                ({"type": b"\xff\xfe", "id": "nobody-here", "data": "{}"}, "not UTF-8"),
            ]
            expected_by_id = {}
            for fields, expected in bad:
                expected_by_id[(await r.xadd(inbox, fields)).decode()] = expected
            # a good instance in the same partition still runs to its event wait
            iid = next(f"good-{i}" for i in range(1000) if keys.partition(f"good-{i}") == p)
            await c.client.start(definition.name, {"project_id": "p", "task_id": "t", "agent_id": "a"},
                                 instance_id=iid)

            async def dead_letters() -> list[Any]:
                entries = await r.xrange(keys.dlq(p))
                return entries if len(entries) >= len(bad) else []

            entries = await eventually(dead_letters)
            reasons = {f[b"entry_id"].decode(): f[b"reason"].decode() for _, f in entries}
            assert set(reasons) == set(expected_by_id), reasons
            for entry_id, expected in expected_by_id.items():
                assert expected in reasons[entry_id], (expected, reasons[entry_id])
            assert all(f[b"source"].decode() == inbox for _, f in entries)

            async def waiting() -> bool:
                return (await c.client.state(iid)).step("execution_monitoring").status == "waiting"

            await eventually(waiting)
            assert (await r.xpending(inbox, "engine"))["pending"] == 0
            # the bad start created nothing
            assert await r.exists(keys.instance("nobody-here")) == 0

    run(scenario())


def test_malformed_tasks_and_events_are_dead_lettered(cluster_backend: Any, agent_example: bytes) -> None:
    factory, settings = cluster_backend
    keys = Keys(settings.prefix, settings.partitions)

    async def scenario() -> None:
        async with Cluster(factory, settings) as c:
            c.agents.stop()
            r = c.client.redis
            definition, _ = await c.client.register(agent_example)
            bad_attempt = (await r.xadd(keys.tasks(0, "planning-system"), {
                "task_id": "t", "id": "x", "step": "s", "attempt": "one", "reply_to": keys.inbox(0),
                "data": "{}"})).decode()
            bad_data = (await r.xadd(keys.tasks(0, "planning-system"), {
                "task_id": "t", "id": "x", "step": "s", "attempt": "1", "reply_to": keys.inbox(0),
                "data": "[]"})).decode()
            await r.xadd(keys.events, {"data": "{}"})
            await r.xadd(keys.events, {"type": "agent.task_completed", "data": "[1, 2]"})
            await r.xadd(keys.events, {"type": "agent.task_completed", "data": "{oops"})

            async def task_dlq() -> list[Any]:
                entries = await r.xrange(keys.dlq(0))
                return entries if len(entries) >= 2 else []

            by_entry = {f[b"entry_id"].decode(): f[b"reason"].decode() for _, f in await eventually(task_dlq)}
            assert "'attempt' is not an integer" in by_entry[bad_attempt]
            assert "invalid task data" in by_entry[bad_data]

            async def event_dlq() -> list[Any]:
                entries = await r.xrange(f"{keys.events}:dlq")
                return entries if len(entries) >= 3 else []

            reasons = [f[b"reason"].decode() for _, f in await eventually(event_dlq)]
            assert reasons == ["missing field 'type'", "data must be a JSON object, got list",
                               reasons[2]] and "not valid JSON" in reasons[2]
            # and a good instance still completes once its event comes
            c.agents = type(c.agents)(factory(), c.client, keys)
            import asyncio

            sim = asyncio.create_task(c.agents.run())
            iid = await c.client.start(definition.name, {"project_id": "p", "task_id": "t", "agent_id": "a"})
            assert (await c.client.wait(iid, timeout=20)).status == "completed"
            c.agents.stop()
            await sim

    run(scenario())
