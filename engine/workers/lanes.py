"""Priority lanes of the activity workers (issue 16).

A task of an instance whose priority n is above 0 goes to its queue's lane, the stream
``{<prefix>:<p>}:tasks:<queue>:p<n>``; append.lua lists the lane in the partition's set
``{<prefix>:<p>}:lanes``, creating the activity group on it before the first XADD. A worker
finds there the lanes of the queues it serves (every LANE_REFRESH_S, one pipelined SMEMBERS per
partition) and reads them like its other task streams, with two rules:

- lanes first: while the lanes hold entries, a read takes only those, so a flood of
  priority-0 tasks never sits between a worker's free slot and a priority-9 task;
- what one read (and reclaim) returns runs highest lane first, oldest first within a lane.

Priority is strict: while higher lanes have tasks, lower ones wait (that is what priority is
asked for; bound a flood with the per-service limits or a concurrency key).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping

from engine.core.ids import entry_key
from engine.errors import StoreUnavailable
from engine.runtime.consume import Entry, GroupReader
from engine.store.connection import Redis
from engine.store.errors import TRANSIENT
from engine.store.keys import Keys
from engine.store.replies import text

# How often a worker looks for new lanes; also the longest it blocks on a read, so an idle
# worker sees a lane created meanwhile this soon.
LANE_REFRESH_S = 0.5


def by_priority(entries: Iterable[Entry], lanes: Mapping[str, int]) -> list[Entry]:
    """Highest lane first (base streams are lane 0), then oldest entry first."""
    return sorted(entries, key=lambda e: (-lanes.get(e[0], 0), entry_key(e[1])))


class Lanes:
    """The lanes one activity worker reads, kept in its GroupReader's streams after its base ones."""

    def __init__(self, redis: Redis, keys: Keys, reader: GroupReader) -> None:
        self.redis = redis
        self.keys = keys
        self.reader = reader
        self.base = list(reader.streams)
        self.known: dict[str, int] = {}  # lane stream -> its priority, of the queues served
        self._checked = float("-inf")

    def set_base(self, base: Iterable[str], queues: Iterable[str]) -> None:
        """The queues served changed (the HTTP side's set): their base streams, and drop other lanes."""
        served = set(queues)
        self.base = list(base)
        self.known = {s: n for s, n in self.known.items() if self.keys.lane_of(s)[0] in served}
        self.reader.set_streams([*self.base, *self.known])

    async def refresh(self, queues: Iterable[str]) -> list[str]:
        """Read every partition's lanes set; the lanes of the queues served not known before."""
        self._checked = asyncio.get_running_loop().time()
        pipe = self.redis.pipeline(transaction=False)
        for p in range(self.keys.partitions):
            pipe.smembers(self.keys.lanes(p))
        try:
            replies = await pipe.execute()
        except TRANSIENT as exc:
            raise StoreUnavailable(f"redis unavailable reading the priority lanes: {exc}") from exc
        served = set(queues)
        found: dict[str, int] = {}
        for members in replies:
            for raw in members:
                queue, n = self.keys.lane_of(text(raw))
                if n and queue in served:
                    found[text(raw)] = n
        new = sorted(set(found) - set(self.known))
        if found.keys() != self.known.keys():
            self.known = found
            self.reader.set_streams([*self.base, *sorted(found)])
        return new

    async def tick(self, queues: Iterable[str]) -> None:
        """Refresh when LANE_REFRESH_S passed since the last look."""
        if asyncio.get_running_loop().time() - self._checked >= LANE_REFRESH_S:
            await self.refresh(queues)

    def block_ms(self, block_ms: int) -> int:
        cap = int(LANE_REFRESH_S * 1000)
        return min(block_ms, cap) if block_ms > 0 else cap  # 0 would block until an entry comes

    async def read(self, count: int, block_ms: int) -> list[Entry]:
        """Up to count entries per stream: the lanes' alone when they have some (without waiting),
        else one read over every stream, blocking at most LANE_REFRESH_S."""
        if self.known:
            entries = await self.reader.read(count, None, only=list(self.known))
            if entries:
                return self.order(entries)
        return self.order(await self.reader.read(count, self.block_ms(block_ms)))

    def order(self, entries: Iterable[Entry]) -> list[Entry]:
        # no lanes known: every entry is lane 0, and reads keep their order (no sort on the hot path)
        return by_priority(entries, self.known) if self.known else list(entries)
