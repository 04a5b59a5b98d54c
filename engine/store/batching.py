"""Coalesce many awaited calls of one script into pipelined round trips.

Activity handlers finish independently; reporting each result with its own
awaited EVALSHA costs a round trip (and a pooled connection) per task. Calls
made while a flush is in flight, or in the same loop turn, share the next
pipeline instead; each caller still awaits its own answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from engine.store.events import Store

Call = tuple[Sequence[Any], Sequence[Any]]


class ScriptBatcher:
    def __init__(self, store: Store, script: str, max_batch: int = 256) -> None:
        self.store = store
        self.script = script
        self.max_batch = max_batch
        self._pending: list[tuple[Call, asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def call(self, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append(((keys, args), future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # let the calls of this loop turn join the first batch
        while self._pending:
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch:]
            try:
                results = await self.store.run_many(self.script, [call for call, _ in batch])
            except BaseException as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)
