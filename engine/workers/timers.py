"""Durable timers: every worker polls; the fire script moves each due timer
into its partition inbox exactly once, judged by the Redis server's clock."""

from __future__ import annotations

import asyncio
import logging

from engine.config import Settings
from engine.errors import StoreUnavailable
from engine.store.events import Store

log = logging.getLogger("foldflow.timers")


class TimerPoller:
    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.interval = settings.timer_poll_ms / 1000
        self.fired = 0
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def tick(self) -> int:
        results = await self.store.fire_timers()
        moved = sum(n for n, _ in results)
        self.fired += moved
        return moved

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                moved = await self.tick()
                if moved:
                    continue  # more may be due right now
            except StoreUnavailable as exc:
                log.warning("timer poll skipped: %s", exc)
            except Exception:
                log.exception("timer poll failed")
            try:
                await asyncio.wait_for(self._stopping.wait(), self.interval)
            except TimeoutError:
                pass
