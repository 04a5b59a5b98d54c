"""Subscriptions: the per-process cap, one bounded queue per subscriber, and what
fills it.

A subscription's reader first catches up on its own: the history it has not sent
yet (an execution: XRANGE), waiting for room in the queue
as it goes, so the backlog stays in Redis and the client sets the pace. Then an
execution subscriber follows the instance's Tail (tail.py: one blocking XREAD
shared by every subscriber of that instance), and a /events/stream subscriber
keeps its own blocking XREAD over the feeds (its filters are its own). Every
read of a subscription, the short ones included, uses the hub's `blocking`
client, whose pool is its own (engine.store.connection.connect_blocking) and
sized to the cap: a burst of new subscribers waits for a connection there rather
than exhausting the request pool the other routes need.

Once caught up, and once the client has taken the backlog, live messages that do
not fit in the queue (more than ApiSettings.subscription_buffer the client has not
taken) cut the subscriber off: the queue is emptied and a `Closed("too_slow")` is
all it gets next. The id of the last message it got is still a valid resume
point, so it reconnects and misses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator
from typing import Protocol

from engine.api.live.cursor import id_key
from engine.api.live.sources import Contexts, ExecutionSource
from engine.api.live.sse import Closed, Message
from engine.api.live.tail import Tail
from engine.api.settings import ApiSettings
from engine.store.connection import Redis
from engine.store.errors import UNAVAILABLE

log = logging.getLogger("foldflow.api.live")


class Source(Protocol):
    closed: str | None
    """Why no more messages will come (set by the read that sent the last one)."""
    shared: bool
    """Once caught up, follow the instance's Tail instead of reading on (ExecutionSource)."""

    async def read(self) -> tuple[list[Message], bool]:
        """The next messages, and whether the source is caught up (the batch was not full)."""
        ...

    def cancel(self) -> None:
        """Stop what the source has in flight besides the current read."""
        ...


class OverCap(Exception):
    """This process serves as many subscriptions as ApiSettings.max_subscriptions allows."""


class Hub:
    """One per API process: the cap, the blocking client, the tails, the shared context cache."""

    def __init__(self, blocking: Redis, api: ApiSettings) -> None:
        self.blocking = blocking
        self.cap = api.max_subscriptions
        self.buffer = api.subscription_buffer
        self.heartbeat_s = api.heartbeat_s
        self.active = 0
        self.contexts = Contexts()
        self.tails: dict[str, Tail] = {}

    def admit(self) -> Subscription:
        """A slot, before any Redis work; OverCap when every slot is taken."""
        if self.active >= self.cap:
            raise OverCap(f"this API process serves its maximum of {self.cap} live subscriptions; try again, "
                          "or another process")
        self.active += 1
        return Subscription(self)

    def _release(self) -> None:
        self.active -= 1

    def tail(self, source: ExecutionSource) -> Tail:
        """The instance's tail, started at `source`'s position when there is none."""
        found = self.tails.get(source.key)
        if found is None:
            found = self.tails[source.key] = Tail(source.fork(), self._ended)
        return found

    def _ended(self, tail: Tail) -> None:
        if self.tails.get(tail.source.key) is tail:
            del self.tails[tail.source.key]

    async def aclose(self) -> None:
        await self.blocking.aclose()


class Subscription:
    """One subscriber: holds its slot from admit() until close()."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        # Unbounded as a type, bounded by use: catch-up waits for room (_room), and a live
        # offer that would go over the buffer cuts the subscriber off instead.
        self._queue: asyncio.Queue[Message | Closed] = asyncio.Queue()
        self._room = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._source: Source | None = None
        self._tail: Tail | None = None
        self._skip: tuple[int, int] | None = None
        self._open = True

    def start(self, source: Source) -> Subscription:
        self._source = source
        self._task = asyncio.create_task(self._run(source), name="live-reader")
        return self

    async def _run(self, source: Source) -> None:
        try:
            await self._pump(source)
        except UNAVAILABLE as exc:
            log.warning("live subscription ended: Redis unavailable: %s", exc)
            self._end(Closed("Redis did not answer; reconnect with Last-Event-ID to resume", "unavailable"))
        except Exception:
            log.exception("live subscription failed")
            self._end(Closed("the subscription failed; reconnect with Last-Event-ID to resume", "unavailable"))

    async def _pump(self, source: Source) -> None:
        behind = True  # the first read is history: paced, like any catch-up
        while True:
            messages, caught_up = await source.read()
            if caught_up and not behind and self._queue.qsize() + len(messages) > self.hub.buffer:
                self._end(self._too_slow())
                return
            for message in messages:
                await self._put(message)
            if source.closed is not None:
                self._queue.put_nowait(Closed(source.closed))
                return
            if caught_up and behind:
                # Live from here: the backlog must be taken first, or a client that is
                # merely still reading it would look slow to the first live batch.
                await self._queue.join()
                if isinstance(source, ExecutionSource) and source.shared:
                    await self._follow(source)
                    return
            behind = not caught_up

    async def _follow(self, source: ExecutionSource) -> None:
        """Join the instance's tail at exactly this source's position: read the gap to the
        tail's position first; the check and the join have no await between them."""
        while True:
            tail = self.hub.tails.get(source.key)
            if tail is None or id_key(tail.last) <= id_key(source.last):
                self._skip = id_key(source.last)  # a tail behind us resends what we have
                self._tail = self.hub.tail(source)
                self._tail.join(self)
                return
            for message in await source.read_until(tail.last):
                await self._put(message)
            if source.closed is not None:
                self._queue.put_nowait(Closed(source.closed))
                return

    def offer(self, messages: list[Message], closed: Closed | None) -> None:
        if not self._open or self._tail is None:
            return
        if self._skip is not None:
            skip = self._skip
            messages = [m for m in messages if id_key(m.id) > skip]
            if messages:
                self._skip = None
        if messages and self._queue.qsize() + len(messages) > self.hub.buffer:
            self._end(self._too_slow())
            self._leave_tail()
            return
        for message in messages:
            self._queue.put_nowait(message)
        if closed is not None:
            self._queue.put_nowait(closed)
            self._leave_tail()

    def _leave_tail(self) -> None:
        if self._tail is not None:
            tail, self._tail = self._tail, None
            tail.leave(self)

    def _too_slow(self) -> Closed:
        return Closed(f"too slow: more than {self.hub.buffer} messages were waiting for this client; "
                      "reconnect with Last-Event-ID to resume", "too_slow")

    async def _put(self, message: Message) -> None:
        while self._queue.qsize() >= self.hub.buffer:
            self._room.clear()
            await self._room.wait()
        self._queue.put_nowait(message)

    def _end(self, closed: Closed) -> None:
        while not self._queue.empty():
            self._queue.get_nowait()
            self._queue.task_done()
        self._queue.put_nowait(closed)

    async def items(self) -> AsyncGenerator[Message | Closed | None, None]:
        """Each message, then the Closed; None when nothing came for heartbeat_s (a heartbeat is due)."""
        try:
            while True:
                try:
                    async with asyncio.timeout(self.hub.heartbeat_s):
                        item = await self._queue.get()
                    self._queue.task_done()
                except TimeoutError:
                    yield None
                    continue
                if self._queue.qsize() < self.hub.buffer:
                    self._room.set()
                yield item
                if isinstance(item, Closed):
                    return
        finally:
            await self.close()

    async def close(self) -> None:
        if not self._open:
            return
        self._open = False
        self.hub._release()
        self._leave_tail()
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._source is not None:
            self._source.cancel()
