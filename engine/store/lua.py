"""The Lua scripts of engine/store/scripts/, loaded once and run by SHA.

The script cache is volatile (restart, failover, SCRIPT FLUSH), so a NOSCRIPT
answer loads the script again and runs that call with EVAL; a pipeline of calls
(evalsha_many) does the same per call (REDIS-NOTES, "Scripts").
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from engine.errors import StoreUnavailable
from engine.store.connection import evalsha_many
from engine.store.errors import TRANSIENT

SCRIPTS = Path(__file__).parent / "scripts"
NAMES = ("append", "dead_letter", "complete_task", "fire_timers", "register_definition", "lease", "breaker",
         "publish_event")
log = logging.getLogger("foldflow.store")


class Script:
    __slots__ = ("name", "sha", "source")

    def __init__(self, name: str) -> None:
        self.name = name
        self.source = (SCRIPTS / f"{name}.lua").read_bytes()
        self.sha = hashlib.sha1(self.source).hexdigest()


class ScriptRunner:
    """Runs the write side's scripts, one call or a pipeline of them, WAITing for replicas when asked."""

    def __init__(self, redis: aioredis.Redis, *, wait_replicas: int = 0, wait_timeout_ms: int = 1000) -> None:
        self.redis = redis
        self.wait_replicas = wait_replicas  # WAIT for this many replicas after each batch of writes
        self.wait_timeout_ms = wait_timeout_ms
        self.under_replicated = 0  # batches that fewer replicas acknowledged in time
        self.scripts = {n: Script(n) for n in NAMES}

    async def load_scripts(self) -> None:
        for script in self.scripts.values():
            await self.redis.script_load(script.source)

    async def run(self, name: str, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        script = self.scripts[name]
        try:
            try:
                return await self.redis.evalsha(script.sha, len(keys), *keys, *args)
            except NoScriptError:
                # The script cache is volatile (restart, failover, SCRIPT FLUSH): load it
                # for next time, and run this call with EVAL, which a flush cannot race.
                await self.redis.script_load(script.source)
                return await self.redis.eval(script.source.decode(), len(keys), *keys, *args)
        except TRANSIENT as exc:
            raise StoreUnavailable(f"redis unavailable running {name}.lua: {exc}") from exc

    async def run_many(self, name: str, calls: Sequence[tuple[Sequence[Any], Sequence[Any]]],
                       *, partial: bool = False) -> list[Any]:
        """Pipeline many calls of one script; NOSCRIPT answers are loaded and re-run.

        StoreUnavailable when Redis does not answer; with ``partial``, only when no call got
        through: a call that failed in transit (Redis Cluster: one node failing over while
        the others answer) is returned as its exception, the others' replies as they are.
        """
        if not calls:
            return []
        script = self.scripts[name]
        try:
            wait = (self.wait_replicas, self.wait_timeout_ms, self._replicated) if self.wait_replicas else None
            results = await evalsha_many(self.redis, script.sha, script.source, calls, wait)
        except TRANSIENT as exc:
            raise StoreUnavailable(f"redis unavailable running {name}.lua: {exc}") from exc
        answered = partial and any(not isinstance(r, Exception) for r in results)
        for r in results:
            if isinstance(r, TRANSIENT):
                if answered:
                    continue
                raise StoreUnavailable(f"redis unavailable running {name}.lua: {r}") from r
            if isinstance(r, Exception):
                raise r
        return results

    def _replicated(self, acked: int) -> None:
        if acked < self.wait_replicas:
            self.under_replicated += 1
            log.warning("WAIT %d: only %d replicas acknowledged within %d ms", self.wait_replicas, acked,
                        self.wait_timeout_ms)
