"""The engine worker's side loops end when the worker stops, and a drain that runs out of time
says what was still running.

A cancellation that lands inside a Redis call can come back as a connection error (the
client drops the connection it was reading), which a loop takes for "Redis is away" and
goes on: a worker whose side loop swallowed its cancel never finished its drain (the full
suite saw `in-flight work did not finish within 15.0s` at exit). So every side loop also
ends on the worker's stop(), as the router, relay and timers always have."""

from __future__ import annotations

import asyncio
from typing import Any

import fakeredis
from redis.exceptions import ConnectionError as RedisConnectionError

from engine.config import Settings
from engine.runtime.lifecycle import still_running
from engine.workers.engine import EngineWorker
from tests.support.poll import run


def _cancel_becomes_a_redis_error(loop_once: Any) -> Any:
    async def once(*args: Any, **kwargs: Any) -> Any:
        try:
            await asyncio.sleep(1.0)  # a slow call: the cancel lands inside it
            return await loop_once(*args, **kwargs)
        except asyncio.CancelledError:
            raise RedisConnectionError("Connection closed by server.") from None
    return once


def test_stop_ends_the_scheduler_and_the_reconciler_whatever_their_redis_calls_raise() -> None:
    async def scenario() -> None:
        settings = Settings(prefix="sideloops", partitions=2, schedule_poll_ms=20)
        worker = EngineWorker(fakeredis.FakeAsyncRedis(), settings)
        worker.reconciler.every_s = 0.02
        worker.reconciler.once = _cancel_becomes_a_redis_error(worker.reconciler.once)  # type: ignore[method-assign]
        worker.scheduler.tick = _cancel_becomes_a_redis_error(worker.scheduler.tick)  # type: ignore[method-assign]
        loops = [asyncio.create_task(worker.reconciler.run(), name="admission"),
                 asyncio.create_task(worker.scheduler.run(), name="scheduler")]
        await asyncio.sleep(0.1)
        for task in loops:
            task.cancel()  # each comes back as a connection error: the loop goes on ...
        await asyncio.sleep(0.1)
        assert not any(t.done() for t in loops), "the loops should have taken the cancel for a Redis error"
        worker.stop()  # ... until the worker stops it
        done, pending = await asyncio.wait(loops, timeout=5)
        assert not pending, still_running()
    run(scenario())


def test_a_drain_names_what_is_still_running_and_where() -> None:
    async def waits_for_redis() -> None:
        await asyncio.sleep(30)

    async def side_loop() -> None:
        await waits_for_redis()

    async def scenario() -> str:
        task = asyncio.create_task(side_loop(), name="scheduler")
        await asyncio.sleep(0)
        try:
            return still_running()
        finally:
            task.cancel()
    said = run(scenario())
    assert "scheduler at " in said and "side_loop > " in said and "waits_for_redis > " in said, said


def test_close_ends_the_http_sides_refresh_loop_whatever_its_calls_raise() -> None:
    from engine.outbound.settings import HttpSettings
    from engine.workers.http.serving import HttpServing

    async def scenario() -> None:
        settings = Settings(prefix="sideloops", partitions=2)
        serving = HttpServing(fakeredis.FakeAsyncRedis(), settings, HttpSettings(refresh_ms=20), env={})

        async def refresh(worker: Any, *, queues: bool) -> None:
            try:
                await asyncio.sleep(1.0)  # a slow call: the cancel lands inside it
            except asyncio.CancelledError:
                raise RedisConnectionError("Connection closed by server.") from None

        serving.refresh = refresh  # type: ignore[method-assign]
        serving._loop = asyncio.create_task(serving._run(None), name="http-serving")  # type: ignore[arg-type]
        await asyncio.sleep(0.1)
        await asyncio.wait_for(serving.close(), timeout=5)  # the cancel is swallowed once; the flag ends it
    run(scenario())
