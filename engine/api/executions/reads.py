"""The reads /executions needs beyond engine.Client: one fold that also gives the
stream's last entry id (where a wait begins), a blocking wait on an instance
stream, history pages, and the executions under a correlation id. Redis errors
become StoreUnavailable here, as they do in the Client."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from engine.api.services import Services
from engine.core.evolve import fold_stored
from engine.core.ids import INSTANCE_ID_RE
from engine.core.model import INITIAL, Event, State, WorkflowCreated
from engine.errors import InvalidInput, PoisonMessage
from engine.store.errors import translate_methods
from engine.store.events import decode_stored
from engine.store.replies import text
from projections.keys import ViewKeys

Stored = tuple[str, Event, int]
# Entries taken per XREAD while waiting: a start writes a handful, so one read is the usual case.
_WAIT_BATCH = 100


class Folded:
    """An instance as its stream has it now (`events` and `created` only when read whole)."""

    __slots__ = ("created", "events", "last_id", "state")

    def __init__(self, events: list[Stored]) -> None:
        self.events = events
        self.state: State = fold_stored(INITIAL, ((e, ts) for _, e, ts in events))
        self.last_id: str | None = events[-1][0] if events else None
        first = events[0][1] if events else None
        self.created = first if isinstance(first, WorkflowCreated) else None

    def extend(self, more: list[Stored]) -> Folded:
        """This, with the events appended after it folded in."""
        out = Folded(self.events + more) if self.events or not more else Folded(more)
        if more and not self.events:  # self came from a snapshot: fold onto its state
            out.state = fold_stored(self.state, ((e, ts) for _, e, ts in more))
            out.created = self.created
        return out


def check_id(execution_id: str) -> str:
    if not INSTANCE_ID_RE.match(execution_id):
        raise InvalidInput(f"invalid execution id {execution_id!r}: 1-200 of A-Z a-z 0-9 _ . : @ + - "
                           "(starting alphanumeric)")
    return execution_id


MAX_BLOCK_MS = 10_000  # engine/api/app.py sizes the blocking pool's read timeout to it


@translate_methods
class Reads:
    def __init__(self, services: Services) -> None:
        self.redis = services.redis
        self.blocking = services.blocking
        self.store = services.client.store
        self.keys = services.client.keys
        self.vk = ViewKeys(self.keys)

    async def fold(self, execution_id: str) -> Folded:
        return Folded(await self.store.read_events(check_id(execution_id)))

    async def current(self, execution_id: str) -> Folded:
        """The state and last entry id without the events: from the instance's snapshot and
        the events after it, so a long history is not replayed per request."""
        (loaded,) = await self.store.load_many([(check_id(execution_id), INITIAL, None)])
        if isinstance(loaded, PoisonMessage):
            raise loaded
        folded = Folded([])
        folded.state, folded.last_id = loaded
        return folded

    async def wait(self, execution_id: str, after: str | None, done: Callable[[list[Stored]], bool],
                   wait_ms: int) -> list[Stored]:
        """The events appended after `after`, read with blocking XREADs until done(them) or
        wait_ms passes: one blocked read on Redis per waiting request, never a poll."""
        key = self.keys.instance(check_id(execution_id))
        deadline = time.monotonic() + wait_ms / 1000
        cursor, seen = after or "0-0", list[Stored]()
        while not done(seen):
            block = int((deadline - time.monotonic()) * 1000)
            if block < 1:  # BLOCK 0 would wait forever
                break
            # Parked on the blocking pool, never longer than its read timeout allows.
            reply: Any = await self.blocking.xread({key: cursor}, count=_WAIT_BATCH, block=min(block, MAX_BLOCK_MS))
            for _stream, entries in (reply.items() if isinstance(reply, dict) else reply or []):
                for entry_id, fields in entries:
                    seen.append(decode_stored(execution_id, entry_id, fields))
                    cursor = text(entry_id)
        return seen

    async def page(self, execution_id: str, after: str | None, count: int) -> list[tuple[str, int, Event, int]]:
        return await self.store.read_page(check_id(execution_id), after, count)



def step_names(definition: Any, fallback: Sequence[str] = ()) -> list[str]:
    return [s.name for s in definition.steps] if definition is not None else list(fallback)
