"""The engine worker's bounded cache of instance states, validated against the stream.

A cached state carries the id of the last event folded into it. It is used as
is until an append is refused on version; then the stream's tail after that id
is folded in (``load_many``), and a tail that does not continue it reloads the
instance from the start.
"""

from __future__ import annotations

from collections import OrderedDict

from engine.core.model import INITIAL, STATUS_NONE, Envelope, StartWorkflow, State
from engine.errors import PoisonMessage
from engine.store.events import Store


class StateCache:
    """Bounded LRU of instance states, each with the id of the last event folded."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[str, tuple[State, str | None]] = OrderedDict()
        self.hits = self.misses = 0  # ops: lookups by the engine worker (cache hit ratio)

    def get(self, iid: str) -> tuple[State, str | None] | None:
        item = self._items.get(iid)
        if item is not None:
            self._items.move_to_end(iid)
        return item

    def put(self, iid: str, state: State, last_id: str | None) -> None:
        self._items[iid] = (state, last_id)
        self._items.move_to_end(iid)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def drop(self, iid: str) -> None:
        self._items.pop(iid, None)

    def __len__(self) -> int:
        return len(self._items)


async def current_states(
    cache: StateCache, store: Store, todo: dict[str, list[Envelope]], stale: set[str]
) -> tuple[dict[str, State | PoisonMessage], dict[str, str | None]]:
    """Each instance's state, and the id of the stream entry it was folded up to.

    ``stale``: instances whose cached state an append refused; their streams' tails are read.
    """
    out: dict[str, State | PoisonMessage] = {}
    lasts: dict[str, str | None] = {}
    wanted: list[tuple[str, State, str | None]] = []
    for iid, envs in todo.items():
        cached = cache.get(iid)
        cache.hits += cached is not None and iid not in stale  # ops: cache hit ratio
        cache.misses += cached is None or iid in stale
        if cached is None and iid not in stale and all(isinstance(e.command, StartWorkflow) for e in envs):
            # A start is almost always for a new id: decide on the empty state and
            # let append.lua's version check catch the rare repeat (it reloads).
            out[iid] = INITIAL
        elif cached is None:
            wanted.append((iid, INITIAL, None))
        elif iid in stale:
            wanted.append((iid, cached[0], cached[1]))
        else:
            out[iid], lasts[iid] = cached
    if wanted:
        for (iid, _, _), loaded in zip(wanted, await store.load_many(wanted)):
            if isinstance(loaded, PoisonMessage):
                cache.drop(iid)
                out[iid] = loaded
            else:
                state, last = loaded
                if state.status != STATUS_NONE:
                    cache.put(iid, state, last)
                out[iid], lasts[iid] = state, last
    return out, lasts
