"""Per-service circuit breakers, their state shared by all activity workers in
Redis: after `threshold` consecutive failures a service's breaker opens; task
attempts for it then wait (they are neither run nor failed) until the
cool-down has passed, when one trial runs: success closes the breaker, failure
opens it for another cool-down.

The hot path stays off Redis while a service is healthy: a worker trusts a
"closed" answer for ADMIT_CACHE_S and reports successes at most once per
SUCCESS_EVERY_S unless it saw a failure since; before it reports a failure it
first sends a success it held back, so one worker never counts failures that a
success separated. Across workers, a success held back for up to
SUCCESS_EVERY_S can let another worker's failures look consecutive. Failures
are always reported at once.
"""

from __future__ import annotations

import logging
import time

from engine.store.events import Store

ADMIT_CACHE_S = 0.25
SUCCESS_EVERY_S = 1.0

log = logging.getLogger("foldflow.breaker")


class CircuitBreakers:
    def __init__(self, store: Store, threshold: int, cooldown_ms: int) -> None:
        self.store = store
        self.threshold = threshold
        self.cooldown_ms = cooldown_ms
        self.opened = 0
        self._closed_until: dict[str, float] = {}  # service -> trust "closed" until (monotonic)
        self._reported: dict[str, float] = {}  # service -> last success sent (monotonic)
        self._failing: set[str] = set()  # services with a failure since the last success sent
        self._unreported: set[str] = set()  # services with a success not sent yet

    @property
    def enabled(self) -> bool:
        return self.threshold > 0

    def key(self, service: str) -> str:
        return self.store.keys.breaker(service)

    async def admit(self, service: str) -> float:
        """Seconds to wait before a task for ``service`` may run (0: run now)."""
        if not self.enabled:
            return 0.0
        now = time.monotonic()
        if self._closed_until.get(service, 0.0) > now:
            return 0.0
        verdict, wait_ms = await self.store.run("breaker", [self.key(service)],
                                                ["admit", self.threshold, self.cooldown_ms])
        if int(verdict) == 1:
            self._closed_until[service] = now + ADMIT_CACHE_S
            return 0.0
        return 0.0 if int(verdict) == 2 else max(int(wait_ms), 1) / 1000

    async def record(self, service: str, healthy: bool) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if healthy and service not in self._failing and now - self._reported.get(service, -SUCCESS_EVERY_S) < SUCCESS_EVERY_S:
            self._unreported.add(service)
            return
        if not healthy and service in self._unreported:
            # A success we did not send sits between this failure and the last one:
            # reset the count first, so only consecutive failures open the breaker.
            await self.store.run("breaker", [self.key(service)], ["success", self.threshold, self.cooldown_ms])
        self._unreported.discard(service)
        op = "success" if healthy else "failure"
        closed, _ = await self.store.run("breaker", [self.key(service)], [op, self.threshold, self.cooldown_ms])
        if healthy:
            self._failing.discard(service)
            self._reported[service] = now
        else:
            self._failing.add(service)
            self._closed_until.pop(service, None)
        if not healthy and not int(closed):
            self.opened += 1
            log.warning("circuit breaker for service %r is open for %d ms", service, self.cooldown_ms)

    async def state(self, service: str) -> str:
        value = await self.store.redis.hget(self.key(service), "state")
        return value.decode() if isinstance(value, bytes) else (value or "closed")
