"""Run records and the streams of seed 003's execution-plan messages (streams.md,
"Execution plans"): the Redis side of `foldflow bridge` and of /api/v1/runs.

A run is an instance whose id is the run id. Its record ``{ff:p}:run:<run_id>``
shares the instance's hash tag, so the monitor's script can move a run's guard
and acknowledge the partition feed in one call. What a record holds is only
what the events do not: who triggered the run and when, who cancelled it, and
the monitor's guard. Status, steps and times come from the read models.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from engine.errors import StoreUnavailable
from engine.store.connection import Redis, is_cluster
from engine.store.errors import TRANSIENT
from engine.store.keys import Keys
from engine.store.lua import Script, ScriptRunner
from engine.store.replies import text

EXECUTION_REQUESTS = "workflow.execution.requests"
CANCELLATION_REQUESTS = "workflow.cancellation.requests"
MONITORING_UPDATES = "workflow.monitoring.updates"
INTAKE_GROUP = "bridge"
MONITOR_GROUP = "bridge:monitor"
BRIDGE_SOURCE = "bridge"
"""The record's ``source`` for runs the bridge started: only those get monitoring updates."""


class RunKeys:
    """Key names of the bridge (the rest live in engine/store/keys.py)."""

    def __init__(self, keys: Keys) -> None:
        self.keys = keys
        p = keys.prefix
        self.requests = f"{p}:{EXECUTION_REQUESTS}"
        self.cancellations = f"{p}:{CANCELLATION_REQUESTS}"
        self.monitoring = f"{p}:{MONITORING_UPDATES}"
        self.dlq = f"{p}:bridge:dlq"

    def record(self, run_id: str, p: int | None = None) -> str:
        return f"{self.keys.tag(self.keys.partition(run_id) if p is None else p)}:run:{run_id}"


class MonitorBlock:
    """One run's part of a monitor call: the guard it moves and what it publishes."""

    __slots__ = ("entry_ids", "expected", "messages", "new", "run_id", "status")

    def __init__(self, run_id: str, expected: int, new: int, status: str, messages: list[bytes],
                 entry_ids: list[str]) -> None:
        self.run_id, self.expected, self.new, self.status = run_id, expected, new, status
        self.messages, self.entry_ids = messages, entry_ids


class RunStore(ScriptRunner):
    def __init__(self, redis: Redis, keys: Keys) -> None:
        super().__init__(redis)
        self.keys = keys
        self.rk = RunKeys(keys)
        self.scripts = {"bridge_monitor": Script("bridge_monitor")}

    async def _do(self, what: str, call: Any) -> Any:
        try:
            return await call
        except TRANSIENT as exc:
            raise StoreUnavailable(f"redis unavailable {what}: {exc}") from exc

    async def create(self, run_id: str, fields: Mapping[str, str]) -> None:
        """Write the fields the record does not have yet: a repeated request keeps the first's."""
        key = self.rk.record(run_id)
        pipe = self.redis.pipeline(transaction=False)  # HSETNX: a retry completes a half-written record
        for name, value in fields.items():
            pipe.hsetnx(key, name, value)
        await self._do(f"writing run {run_id}", pipe.execute())

    async def record_cancel(self, run_id: str, cancelled_by: str, cancelled_at: str, reason: str | None) -> None:
        """The first cancellation's who, when and why; later ones change nothing."""
        fields = {"run_id": run_id, "cancelled_by": cancelled_by, "cancelled_at": cancelled_at}
        if reason:
            fields["cancel_reason"] = reason
        await self.create(run_id, fields)

    async def ack(self, stream: str, group: str, entry_ids: Sequence[str]) -> None:
        """A bare XACK is safe here: a request carried out twice (a stalled bridge acking
        late what another claimed) is idempotent, so an early ack loses nothing."""
        await self._do(f"acknowledging {stream}", self.redis.xack(stream, group, *entry_ids))

    async def get(self, run_id: str) -> dict[str, str] | None:
        raw: Any = await self._do(f"reading run {run_id}", self.redis.hgetall(self.rk.record(run_id)))
        return {text(k): text(v) for k, v in raw.items()} if raw else None

    async def guards(self, p: int, run_ids: Sequence[str]) -> list[tuple[str | None, int, str]]:
        """Per run: (source, monitor guard, last published status); source None: no record."""
        pipe = self.redis.pipeline(transaction=False)
        for run_id in run_ids:
            pipe.hmget(self.rk.record(run_id, p), ["source", "mv", "status"])
        rows: Any = await self._do("reading run guards", pipe.execute())
        return [(None if s is None else text(s), int(mv or 0), text(st) if st else "") for s, mv, st in rows]

    async def publish(self, p: int, group: str, acks: Sequence[str], blocks: Sequence[MonitorBlock]) -> list[int]:
        """One bridge_monitor.lua call; the indexes (0-based) of the blocks it refused."""
        feed = self.keys.feed(p)
        apart = is_cluster(self.redis)
        keys = [feed, feed if apart else self.rk.monitoring]
        args: list[Any] = [group, len(acks), *acks]
        for i, b in enumerate(blocks):
            keys.append(self.rk.record(b.run_id, p))
            messages = [] if apart else b.messages
            args += ["B", 3 + i, b.expected, b.new, b.status, len(messages), *messages, len(b.entry_ids), *b.entry_ids]
        if apart:
            await self._publish_apart(p, blocks)
        reply = await self.run("bridge_monitor", keys, args)
        return [int(x) - 1 for x in reply[1:]]

    async def _publish_apart(self, p: int, blocks: Sequence[MonitorBlock]) -> None:
        """Redis Cluster: the monitoring stream is in another slot than the feed, so updates
        are added before the guard moves; a crash in between publishes them again (each
        carries its ``update_id`` for consumers to drop the repeat), never zero times."""
        current = await self.guards(p, [b.run_id for b in blocks])
        pipe = self.redis.pipeline(transaction=False)
        for b, (_s, mv, _st) in zip(blocks, current):
            if mv == b.expected:
                for message in b.messages:
                    pipe.xadd(self.rk.monitoring, {"data": message})
        await self._do("publishing monitoring updates", pipe.execute())
