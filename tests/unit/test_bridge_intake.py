"""The bridge's intake on fakeredis: a request carried out twice sends one start
(the same cmd_id, and the engine ignores a start of an existing instance); a
request that cannot start is refused and its run reads FAILED, not PENDING."""

from __future__ import annotations

import fakeredis
import orjson
import pytest

from engine.api.v1.runs import run_view
from engine.bridge.intake import Intake
from engine.bridge.messages import CancellationRequest, ExecutionRequest
from engine.client import Client
from engine.config import Settings
from engine.errors import PoisonMessage
from engine.store.runs import RunStore
from tests.support.poll import run

PLAN = {"workflow_id": "p", "start_step": "a", "steps": {"a": {"agent_name": "extractor", "next_step": None}}}


def intake(prefix: str, **settings: int) -> Intake:
    redis = fakeredis.aioredis.FakeRedis(server=fakeredis.FakeServer())
    client = Client(redis, Settings(prefix=prefix, partitions=2, **settings))
    return Intake(client, RunStore(redis, client.keys), clock=lambda: 1_700_000_000.0)


def request(plan: dict[str, object] = PLAN, by: str | None = "me", data: dict[str, object] | None = None) -> ExecutionRequest:
    return ExecutionRequest("run-1", plan, data or {"x": 1}, "2026-01-01T00:00:00Z", by)


async def starts(i: Intake) -> list[dict[bytes, bytes]]:
    inbox = i.client.keys.inbox(i.client.keys.partition("run-1"))
    return [f for _id, f in await i.client.redis.xrange(inbox) if f[b"type"] == b"start"]


def test_a_request_carried_out_twice_sends_one_start_command(prefix: str) -> None:
    async def go() -> None:
        i = intake(prefix)
        assert await i.execute(request(by="first"), "1-0") == "run-1"
        assert await i.execute(request(by="second"), "1-0") == "run-1"  # redelivered after a crash
        sent = await starts(i)
        assert len({f[b"cmd_id"] for f in sent}) == 1  # one command id: the engine applies it once
        record = await i.runs.get("run-1")
        assert record is not None
        assert (record["triggered_by"], record["source"], record["workflow"]) == ("first", "bridge", "p")
        assert record["created_at"] == "2023-11-14T22:13:20.000Z"
        assert orjson.loads(sent[0][b"data"])["context"] == {"x": 1}

    run(go())


def test_an_invalid_plan_is_refused_with_every_problem_and_its_path(prefix: str) -> None:
    async def go() -> None:
        i = intake(prefix)
        with pytest.raises(PoisonMessage, match=r"invalid workflow_plan: start_step: unknown step 'b'"):
            await i.execute(request({"start_step": "b", "steps": {"a": {"agent_name": "x"}}}), "1-0")
        assert await i.runs.get("run-1") is None and await starts(i) == []

    run(go())


def test_a_run_that_cannot_start_reads_failed_with_the_reason(prefix: str) -> None:
    async def go() -> None:
        i = intake(prefix, max_payload_bytes=200)
        with pytest.raises(PoisonMessage, match="cannot start run run-1"):
            await i.execute(request(data={"blob": "x" * 500}), "1-0")
        record = await i.runs.get("run-1")
        row = run_view("run-1", record, None)
        assert row.status == "FAILED" and row.error_message and "cannot start run run-1" in row.error_message

    run(go())


def test_a_cancellation_of_an_unknown_run_is_refused(prefix: str) -> None:
    async def go() -> None:
        i = intake(prefix)
        with pytest.raises(PoisonMessage, match="no run 'nope'"):
            await i.cancel(CancellationRequest("nope", "ops", None, None), "2-0")

    run(go())


def test_a_cancellation_before_the_engine_created_the_run_is_sent_and_recorded(prefix: str) -> None:
    async def go() -> None:
        i = intake(prefix)
        await i.execute(request(), "1-0")
        assert await i.cancel(CancellationRequest("run-1", "ops", "wrong", None), "2-0") is True
        inbox = i.client.keys.inbox(i.client.keys.partition("run-1"))
        types = [f[b"type"] for _id, f in await i.client.redis.xrange(inbox)]
        assert types == [b"start", b"cancel"]  # behind the start in the inbox: decided after it
        record = await i.runs.get("run-1")
        assert record is not None and (record["cancelled_by"], record["cancel_reason"]) == ("ops", "wrong")

    run(go())
