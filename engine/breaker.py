"""Per-service circuit breakers, their state shared by all activity workers in
Redis: after `threshold` consecutive failures a service's breaker opens; task
attempts for it then wait (they are neither run nor failed) until the
cool-down has passed, when one trial runs: success closes the breaker, failure
opens it for another cool-down."""

from __future__ import annotations

import logging

from .store import Store

log = logging.getLogger("foldflow.breaker")


class CircuitBreakers:
    def __init__(self, store: Store, threshold: int, cooldown_ms: int) -> None:
        self.store = store
        self.threshold = threshold
        self.cooldown_ms = cooldown_ms
        self.opened = 0

    @property
    def enabled(self) -> bool:
        return self.threshold > 0

    def key(self, service: str) -> str:
        return f"{self.store.keys.prefix}:breaker:{service}"

    async def admit(self, service: str) -> float:
        """Seconds to wait before a task for ``service`` may run (0: run now)."""
        if not self.enabled:
            return 0.0
        verdict, wait_ms = await self.store.run("breaker", [self.key(service)],
                                                ["admit", self.threshold, self.cooldown_ms])
        return 0.0 if int(verdict) else max(int(wait_ms), 1) / 1000

    async def record(self, service: str, healthy: bool) -> None:
        if not self.enabled:
            return
        op = "success" if healthy else "failure"
        closed, _ = await self.store.run("breaker", [self.key(service)], [op, self.threshold, self.cooldown_ms])
        if not healthy and not int(closed):
            self.opened += 1
            log.warning("circuit breaker for service %r is open for %d ms", service, self.cooldown_ms)

    async def state(self, service: str) -> str:
        value = await self.store.redis.hget(self.key(service), "state")
        return value.decode() if isinstance(value, bytes) else (value or "closed")
