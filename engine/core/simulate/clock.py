"""The simulated clock: one agenda of everything due at a simulated time (mocked
answers, events, signals, timers), taken in (time, arrival) order. Nothing waits:
taking the next item moves the clock to its time, so a run with retries, delays
and timeouts of hours takes as long as its decisions do.

Timers are keyed as the store keys them, (kind, step, attempt), so arming one
again moves it and disarming one makes its agenda entry stale (skipped when it
comes up), as ZADD and ZREM do on the timer set.
"""

from __future__ import annotations

import heapq
from typing import Any

TimerKey = tuple[str, str, int]  # (kind, step, attempt), as the timer set's members


class Clock:
    __slots__ = ("_agenda", "_armed", "_seq", "now", "start")

    def __init__(self, start_ms: int) -> None:
        self.start = start_ms
        self.now = start_ms
        self._agenda: list[tuple[int, int, Any]] = []
        self._armed: dict[TimerKey, tuple[int, int]] = {}
        self._seq = 0

    @property
    def elapsed(self) -> int:
        return self.now - self.start

    def at(self, due: int, item: Any) -> None:
        """``item`` comes up at ``due`` (never before now: the past is the present)."""
        self._seq += 1
        heapq.heappush(self._agenda, (max(due, self.now), self._seq, item))

    def arm(self, key: TimerKey, due: int) -> None:
        if self._armed.get(key, (None, 0))[0] == due:
            return
        self._seq += 1
        self._armed[key] = (due, self._seq)
        heapq.heappush(self._agenda, (max(due, self.now), self._seq, key))

    def disarm(self, key: TimerKey) -> None:
        self._armed.pop(key, None)

    def armed(self) -> dict[TimerKey, int]:
        return {key: due for key, (due, _) in self._armed.items()}

    def peek(self) -> int | None:
        """When the next live item is due; None when nothing is left."""
        self._drop_stale()
        return self._agenda[0][0] if self._agenda else None

    def pop(self) -> Any:
        """The next live item (a TimerKey for a timer); the clock moves to its time."""
        self._drop_stale()
        due, _, item = heapq.heappop(self._agenda)
        self.now = due
        if isinstance(item, tuple):
            del self._armed[item]  # a fired timer is no longer armed
        return item

    def _drop_stale(self) -> None:
        while self._agenda:
            _, seq, item = self._agenda[0]
            if not isinstance(item, tuple) or self._armed.get(item, (None, -1))[1] == seq:
                return
            heapq.heappop(self._agenda)
