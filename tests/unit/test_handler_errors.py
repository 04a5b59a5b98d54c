"""A handler's exception is recorded with its type, its message and where in the
handler's own code it was raised: in the step's error, the history and the log.
A bare ``str(exc)`` made ``KeyError('warehouse_code')`` read ``'warehouse_code'``.
Runs on fakeredis: the activity worker's path is the same as on a real Redis."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from engine.client import Client
from engine.config import Settings
from engine.core.model import Task
from engine.runtime.observe import ActivityObserver
from engine.workers.activities import ActivityWorker, Registry
from engine.workers.engine import EngineWorker
from engine.workers.handler_errors import MAX_ERROR_CHARS, StepError, handler_error
from tests.support.poll import run

HERE = Path(__file__)
SHOWN = "tests/unit/test_handler_errors.py"  # as imported: relative to the repo root on sys.path
SHOP = {"name": "shop", "version": "1",
        "definition": {"steps": [{"name": "reserve", "step_type": "service_call", "service": "shop"}]}}


def line_of(marker: str) -> int:
    """The line of this file that carries ``# <marker>``, so no assertion hard-codes a number."""
    lines = HERE.read_text().splitlines()
    found = [n for n, line in enumerate(lines, 1) if line.rstrip().endswith(f"# {marker}") and "line_of" not in line]
    assert len(found) == 1, (marker, found)
    return found[0]


async def reserve(task: Task) -> dict[str, Any]:
    raise KeyError("warehouse_code")  # raised-in-reserve


def reserve_in_a_thread(task: Task) -> dict[str, Any]:
    return {"code": {}["warehouse_code"]}  # raised-in-thread


def _lookup(order: dict[str, Any]) -> Any:
    return order["warehouse_code"]  # raised-in-helper


async def reserve_via_helper(task: Task) -> dict[str, Any]:
    return {"code": _lookup({})}


async def reserve_via_a_library(task: Task) -> dict[str, Any]:
    return json.loads("{not json")  # raised-via-library


async def refuse(task: Task) -> dict[str, Any]:
    raise StepError("warehouse w-1 is closed", retryable=False)


class OutOfStock(StepError):
    pass


async def refuse_with_a_subclass(task: Task) -> dict[str, Any]:
    raise OutOfStock("sku-9 is out of stock")


async def huge(task: Task) -> dict[str, Any]:
    raise ValueError("x" * 2_000_000)  # raised-huge


def settings_for(prefix: str) -> Settings:
    return Settings(prefix=prefix, partitions=2, block_ms=20, timer_poll_ms=20, claim_idle_ms=1_000,
                    breaker_threshold=0, max_payload_bytes=100_000)


def failed_step(prefix: str, handler: Any, caplog: pytest.LogCaptureFixture) -> tuple[Any, Any, list[str]]:
    """Run the one-step workflow with ``handler`` serving it: (step error, its history event, task logs)."""
    settings = settings_for(prefix)
    server = fakeredis.FakeServer()
    registry = Registry()
    registry.register("shop", None, handler)

    async def scenario() -> tuple[Any, Any]:
        client = Client(fakeredis.FakeAsyncRedis(server=server), settings)
        worker = EngineWorker(fakeredis.FakeAsyncRedis(server=server), settings)
        acts = ActivityWorker(fakeredis.FakeAsyncRedis(server=server), settings, registry=registry,
                              observer=ActivityObserver(None))
        await worker.prepare()
        tasks = [asyncio.create_task(worker.run()), asyncio.create_task(acts.run())]
        try:
            await client.register(SHOP)
            iid = await client.start("shop")
            state = await client.wait(iid, timeout=20)
            history = await client.history(iid)
        finally:
            worker.stop()
            acts.stop()
            await asyncio.gather(*tasks, return_exceptions=True)
            await client.close()
        assert state.status == "failed", state.status
        event = next(e for e in history if e["type"] == "workflow.step_failed")
        return state.steps["reserve"].error, event["data"]["error"]

    with caplog.at_level(logging.WARNING, logger="foldflow.tasks"):
        error, recorded = run(scenario())
    return error, recorded, [r.getMessage() for r in caplog.records if r.name == "foldflow.tasks"]


def test_a_key_error_names_its_type_message_and_line(prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    expected = f"KeyError: 'warehouse_code' (at {SHOWN}:{line_of('raised-in-reserve')} in reserve)"
    error, recorded, logged = failed_step(prefix, reserve, caplog)
    assert error.message == expected and error.type == "KeyError" and error.kind == "handler" and error.retryable
    assert recorded["message"] == expected and recorded["type"] == "KeyError"  # the history
    assert f"task failed: {expected}" in logged  # the log


def test_a_sync_handler_is_located_through_its_thread(prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    error, _, _ = failed_step(prefix, reserve_in_a_thread, caplog)
    assert error.message == (f"KeyError: 'warehouse_code' (at {SHOWN}:{line_of('raised-in-thread')} "
                             "in reserve_in_a_thread)")


def test_a_step_error_keeps_its_message(prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    error, recorded, logged = failed_step(prefix, refuse, caplog)
    assert (error.message, error.type, error.retryable) == ("warehouse w-1 is closed", "StepError", False)
    assert recorded["message"] == "warehouse w-1 is closed"
    assert "task failed: warehouse w-1 is closed" in logged


def test_the_innermost_frame_of_the_handlers_own_code() -> None:
    """A helper of the handler's is named; a library it called into is not (its call site is)."""
    async def fail(handler: Any) -> dict[str, Any]:
        try:
            await handler(None)
        except Exception as exc:
            return handler_error(exc, handler)
        raise AssertionError("the handler did not raise")

    helper = run(fail(reserve_via_helper))
    assert helper["message"] == f"KeyError: 'warehouse_code' (at {SHOWN}:{line_of('raised-in-helper')} in _lookup)"
    library = run(fail(reserve_via_a_library))
    assert library["message"].startswith("json.decoder.JSONDecodeError: Expecting property name")
    assert library["message"].endswith(f"(at {SHOWN}:{line_of('raised-via-library')} in reserve_via_a_library)")
    assert library["type"] == "JSONDecodeError"
    subclass = run(fail(refuse_with_a_subclass))
    assert (subclass["message"], subclass["type"], subclass["retryable"]) == ("sku-9 is out of stock", "OutOfStock", True)


def test_a_huge_message_is_clipped_and_keeps_its_place(prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    """Clipped, not replaced by "result is N bytes over the limit" (which is final, and says nothing)."""
    error, _, _ = failed_step(prefix, huge, caplog)
    assert len(error.message) <= MAX_ERROR_CHARS and error.retryable
    assert error.message.startswith("ValueError: xxx")
    assert error.message.endswith(f"… (at {SHOWN}:{line_of('raised-huge')} in huge)")
