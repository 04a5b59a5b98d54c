"""One blocking read per followed execution, shared by all of its subscribers.

A subscriber catches up on its own (XRANGE, at its own pace) and then follows the
instance's Tail: the Tail parks one XREAD BLOCK on the instance stream, decodes and
wraps each new event once, and offers the same messages to every follower, so a
hundred watchers of one execution cost one blocked read and one envelope per
event, not a hundred. The Tail ends with the execution (final status), when
Redis does not answer (every follower is told), or when its last follower leaves."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from engine.api.live.sources import ExecutionSource
from engine.api.live.sse import Closed, Message
from engine.store.errors import UNAVAILABLE

log = logging.getLogger("foldflow.api.live")


class Follower(Protocol):
    def offer(self, messages: list[Message], closed: Closed | None) -> None:
        """Take these messages now (never waits: a follower that cannot keep up cuts itself off)."""
        ...


class Tail:
    def __init__(self, source: ExecutionSource, on_end: Callable[[Tail], None]) -> None:
        self.source = source
        self.followers: set[Follower] = set()
        self._on_end = on_end
        self._task = asyncio.create_task(self._run(), name=f"live-tail:{source.iid}")

    @property
    def last(self) -> str:
        return self.source.last

    async def _run(self) -> None:
        try:
            while True:
                messages = await self.source.read_live()
                closed = Closed(self.source.final_reason) if self.source.final else None
                for follower in list(self.followers):
                    follower.offer(messages, closed)
                if closed is not None:
                    return
        except UNAVAILABLE as exc:
            log.warning("live tail of %s ended: Redis unavailable: %s", self.source.iid, exc)
            self._tell(Closed("Redis did not answer; reconnect with Last-Event-ID to resume", "unavailable"))
        except Exception:
            log.exception("live tail of %s failed", self.source.iid)
            self._tell(Closed("the subscription failed; reconnect with Last-Event-ID to resume", "unavailable"))
        finally:
            self._on_end(self)

    def _tell(self, closed: Closed) -> None:
        for follower in list(self.followers):
            follower.offer([], closed)

    def join(self, follower: Follower) -> None:
        self.followers.add(follower)

    def leave(self, follower: Follower) -> None:
        self.followers.discard(follower)
        if not self.followers:
            # Out of the hub at once, not when the cancelled read returns: a new subscriber
            # must start a new tail, never join one that will send nothing more.
            self._on_end(self)
            if not self._task.done():
                self._task.cancel()
