"""Starting a worker role while Redis is not there yet.

A worker started during a Redis restart or a cluster failover (or before Redis
in a compose file) waits for it with capped backoff instead of exiting: an
orchestrator restarting a crashed process costs more than a retry, and a role
that dies at startup leaves its work to time out. A Redis that answers but is
unsafe (eviction policy, partition count) is still refused at once: waiting
cannot fix configuration.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from engine.store.errors import UNAVAILABLE

log = logging.getLogger("foldflow.startup")
MAX_BACKOFF_S = 2.0


async def prepare_when_reachable(prepare: Callable[[], Awaitable[None]], stopping: asyncio.Event, role: str) -> bool:
    """Run ``prepare`` until Redis answers it; False when asked to stop first."""
    backoff = 0.05
    while not stopping.is_set():
        try:
            await prepare()
            return True
        except UNAVAILABLE as exc:
            log.warning("%s: redis unavailable at startup, retrying in %.2fs: %s", role, backoff, exc)
        try:
            await asyncio.wait_for(stopping.wait(), backoff)
        except TimeoutError:
            pass
        backoff = min(backoff * 2, MAX_BACKOFF_S)
    return False
