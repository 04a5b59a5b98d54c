"""Catch-ups of event waits: the events published after an instance started but
before its wait began, delivered to the wait once it is registered.

append.lua adds each wait it registers to ``{ff:p}:catchup``; the worker that
appended does the catch-up right after and strikes the wait off. A worker that
dies in between leaves the wait there, and whoever holds the partition does it
in ``sweep`` once CATCHUP_GRACE_MS have passed. Delivering twice is harmless
(a repeat is ignored).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import orjson

from engine.core.ids import encode_shape, entry_key, filter_shape, wait_signature
from engine.core.model import State, StepWaiting, decode_event, encode
from engine.errors import PoisonMessage, StoreUnavailable
from engine.store.connection import Redis
from engine.store.errors import TRANSIENT
from engine.store.keys import Keys
from engine.workers.router import decode_event_fields, event_command

log = logging.getLogger("foldflow.worker")

# An event wait to catch up: instance id, the wait, the instance's creation (ms; events
# before it do not count), the id of the event an earlier wait took (or None), and its
# member in {ff:p}:catchup.
Wait = tuple[str, StepWaiting, int, "str | None", str]
CATCHUP_GRACE_MS = 5_000  # an append's own catch-up takes milliseconds; older is left over
SWEEP_BATCH = 256  # members read per partition and sweep


def wait_of(iid: str, wait: StepWaiting, state: State) -> Wait:
    since = state.created_ms or 0
    taken = state.last_events.get(wait_signature(wait.event_type, wait.filter))
    member = orjson.dumps([iid, since, taken, encode(wait).decode()]).decode()
    return iid, wait, since, taken, member


def decode_wait(member: str) -> Wait | None:
    try:
        iid, since, taken, raw = orjson.loads(member)
        wait = decode_event(raw)
    except Exception:
        return None
    if not isinstance(wait, StepWaiting) or not isinstance(iid, str) or not isinstance(since, int):
        return None
    return iid, wait, since, taken if isinstance(taken, str) else None, member


class Catchups:
    def __init__(self, redis: Redis, keys: Keys, max_payload_bytes: int) -> None:
        self.redis = redis
        self.keys = keys
        self.max_payload_bytes = max_payload_bytes

    async def catch_up(self, waits: list[Wait]) -> None:
        """Deliver the events each wait missed, then strike the waits off their catch-up sets."""
        pipe = self.redis.pipeline(transaction=False)
        await self._deliver_early_events(waits, pipe)
        for iid, _, _, _, member in waits:  # after the deliveries, in the same round trip
            pipe.zrem(self.keys.catchups(self.keys.partition(iid)), member)
        await _execute(pipe, "delivering events published before a wait")

    async def sweep(self, owned: Sequence[int], now: int) -> int:
        """Catch up the waits of partitions ``owned`` whose catch-up was not confirmed
        within CATCHUP_GRACE_MS of ``now`` (their worker died between its append and the catch-up)."""
        found = await self._left_over(owned, now - CATCHUP_GRACE_MS)
        if found:
            await self.catch_up(found)
            log.warning("caught up %d event waits a worker left unconfirmed", len(found))
        return len(found)

    async def _left_over(self, owned: Sequence[int], cutoff: int) -> list[Wait]:
        pipe = self.redis.pipeline(transaction=False)
        for p in owned:
            pipe.zrangebyscore(self.keys.catchups(p), "-inf", cutoff, start=0, num=SWEEP_BATCH)
        replies = await _execute(pipe, "reading catch-ups")
        found: list[Wait] = []
        unreadable = self.redis.pipeline(transaction=False)
        for p, members in zip(owned, replies):
            for raw in members:
                member = raw.decode() if isinstance(raw, bytes) else str(raw)
                wait = decode_wait(member)
                if wait is None:
                    log.error("dropping an unreadable catch-up member of partition %d: %r", p, member[:200])
                    unreadable.zrem(self.keys.catchups(p), member)
                    continue
                found.append(wait)
        if len(unreadable):
            await _execute(unreadable, "dropping unreadable catch-ups")
        return found

    async def _deliver_early_events(self, waits: list[Wait], deliver: Any) -> None:
        """Add to the pipeline ``deliver`` the events published after an instance started
        but before its wait began, as event commands for its inbox.

        The router indexes every event under the filter shapes definitions wait
        with before it looks for open waits; we look in that index after the wait
        is registered. Whichever runs second sees the other's write, so no event
        is lost; one seen by both arrives twice and the second is ignored. An event
        an earlier wait of the same instance already took does not count again.
        """
        found = await self._first_unseen(waits)
        if not found:
            return
        pipe = self.redis.pipeline(transaction=False)
        for _, _, event_id in found:
            pipe.xrange(self.keys.events, min=event_id, max=event_id)
        entries = await _execute(pipe, "reading events published before a wait")
        for (iid, wait, event_id), rows in zip(found, entries):
            if not rows:
                continue  # trimmed away since it was indexed
            try:
                etype, data, corr = decode_event_fields(rows[0][1], self.max_payload_bytes)
            except PoisonMessage:
                continue  # the router dead-letters it
            command = event_command(iid, wait.step, wait.attempt, etype, event_id, data, corr)
            deliver.xadd(self.keys.inbox(self.keys.partition(iid)), command)

    async def _first_unseen(self, waits: list[Wait]) -> list[tuple[str, StepWaiting, str]]:
        """Per wait, the first indexed event since the instance started that no earlier wait took."""
        pipe = self.redis.pipeline(transaction=False)
        for _, wait, since, _, _ in waits:
            shape = filter_shape(wait.filter)
            pipe.sadd(self.keys.event_shapes(wait.event_type), encode_shape(shape))
            key = self.keys.event_index(wait.event_type, shape, [wait.filter[k] for k in shape])
            pipe.zrangebyscore(key, since, "+inf", start=0, num=16)
        replies = await _execute(pipe, "looking up events published before a wait")
        found = []
        for (iid, wait, _, taken, _), ids in zip(waits, replies[1::2]):
            fresh = [i.decode() for i in ids if taken is None or entry_key(i.decode()) > entry_key(taken)]
            if fresh:
                found.append((iid, wait, fresh[0]))
        return found


async def _execute(pipe: Any, what: str) -> Any:
    """A pipeline's replies; StoreUnavailable (the loop backs off) when Redis does not answer."""
    try:
        return await pipe.execute()
    except TRANSIENT as exc:
        raise StoreUnavailable(f"redis unavailable {what}: {exc}") from exc
