"""Schedules in Redis: one hash per schedule (its definition and state), the index of names,
the ``due`` sorted set the workers claim from, a capped list of recent runs and a queue of
trigger and backfill requests per schedule. Every key shares the hash tag
``{<prefix>:sched}`` (keys.py), so each script runs unchanged on Redis Cluster.

"Now" is the Redis server's clock inside the scripts (claim, put, request, advance), as for
the timers: a worker with a skewed clock neither fires early nor late (streams.md, "Schedules").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import msgspec
import orjson

from engine.core.codec import command_fields
from engine.core.evolve import fold_stored
from engine.core.model import INITIAL
from engine.core.schedules import Run, Schedule
from engine.errors import InvalidInput, NotFound, Refused
from engine.store.connection import Redis
from engine.store.errors import translate_methods
from engine.store.events import Store
from engine.store.keys import Keys
from engine.store.lua import Script, ScriptRunner
from engine.store.replies import text

SCRIPTS = ("schedule_put", "schedule_delete", "schedule_request", "schedule_claim", "schedule_advance")
RUNS_KEPT = 100
MAX_REQUESTS = 100  # queued triggers and backfills of one schedule
COUNTERS = ("started", "triggered", "backfilled", "skipped", "buffered", "cancelled_previous", "missed", "errors")
decode_schedule = msgspec.json.Decoder(Schedule).decode
decode_run = msgspec.json.Decoder(Run).decode


class Request(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A trigger or a backfill, queued for the worker that claims the schedule next."""

    kind: Literal["trigger", "backfill"]
    execution_id: str | None = None
    """trigger: the instance id it starts (<name>@trigger-<ms>)."""
    from_ms: int = 0
    to_ms: int = 0
    overlap: str | None = None
    """None: the schedule's policy (trigger) or allow (backfill)."""


decode_request = msgspec.json.Decoder(Request).decode


class ScheduleState(msgspec.Struct, frozen=True, kw_only=True):
    """A schedule's definition and what the workers recorded."""

    schedule: Schedule
    cursor_ms: int
    """Fire times after this are still to handle."""
    next_ms: int | None = None
    """Its score in the due set (None: not due, paused)."""
    claimed: bool = False
    last_fire_ms: int | None = None
    last_execution_id: str | None = None
    last_started_ms: int | None = None
    buffered_ms: int | None = None
    created_ms: int = 0
    updated_ms: int = 0
    last_error: str = ""
    counters: dict[str, int] = {}


def _int(raw: Any) -> int | None:
    return None if raw is None or text(raw) == "" else int(text(raw))


def _state(fields: Mapping[bytes, bytes], score: float | None, claimed: bool) -> ScheduleState:
    f = {text(k): v for k, v in fields.items()}
    return ScheduleState(
        schedule=decode_schedule(f["def"]), cursor_ms=_int(f.get("cursor_ms")) or 0,
        next_ms=None if score is None else int(score), claimed=claimed,
        last_fire_ms=_int(f.get("last_fire_ms")),
        last_execution_id=text(f["last_execution_id"]) if f.get("last_execution_id") else None,
        last_started_ms=_int(f.get("last_started_ms")), buffered_ms=_int(f.get("buffered_ms")),
        created_ms=_int(f.get("created_ms")) or 0, updated_ms=_int(f.get("updated_ms")) or 0,
        last_error=text(f.get("last_error", b"")), counters={c: _int(f.get(c)) or 0 for c in COUNTERS})


def _flat(pairs: Mapping[str, Any]) -> list[Any]:
    out: list[Any] = [len(pairs)]
    for k, v in pairs.items():
        out += [k, "" if v is None else v]
    return out


@translate_methods
class ScheduleStore:
    """Every Redis operation on schedules; the API, the CLI and the scheduler loop share it."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis, self.keys = redis, keys
        self.store = Store(redis, keys)
        self._scripts = ScriptRunner(redis)
        self._scripts.scripts.update({n: Script(n) for n in SCRIPTS})

    def _k(self, name: str) -> tuple[str, str, str, str]:
        k = self.keys.sched
        return k("names"), k("due"), k("claims"), k(f"s:{name}")

    # -- definitions ---------------------------------------------------------------
    async def put(self, schedule: Schedule, mode: Literal["create", "replace", "pause", "unpause"]) -> int:
        """Write a definition; returns the server's now. Refused (create of a taken name), NotFound."""
        body = msgspec.json.encode(schedule)
        reply = await self._scripts.run("schedule_put", self._k(schedule.name),
                                        [schedule.name, mode, body, "1" if schedule.paused else "0"])
        status = text(reply[0])
        if status == "exists":
            raise Refused(f"a schedule named {schedule.name!r} exists (PUT /schedules/{schedule.name} replaces it)")
        if status == "missing":
            raise NotFound(f"no schedule {schedule.name!r}")
        return int(reply[1])

    async def delete(self, name: str) -> bool:
        k = self.keys.sched
        keys = [*self._k(name), k(f"runs:{name}"), k(f"req:{name}")]
        return int(await self._scripts.run("schedule_delete", keys, [name])) == 1

    async def get(self, name: str) -> ScheduleState | None:
        _, due, claims, key = self._k(name)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(key)
            pipe.zscore(due, name)
            pipe.hexists(claims, name)
            fields, score, claimed = await pipe.execute()
        return _state(fields, score, bool(claimed)) if fields else None

    async def found(self, name: str) -> ScheduleState:
        state = await self.get(name)
        if state is None:
            raise NotFound(f"no schedule {name!r}")
        return state

    async def names(self) -> list[str]:
        return sorted(text(n) for n in await self.redis.smembers(self.keys.sched("names")))

    async def runs(self, name: str, limit: int = 20) -> list[Run]:
        raw = await self.redis.lrange(self.keys.sched(f"runs:{name}"), 0, limit - 1)
        return [decode_run(r) for r in raw]

    async def request(self, name: str, request: Request) -> int:
        k = self.keys.sched
        keys = [k("due"), k(f"s:{name}"), k(f"req:{name}"), k("claims")]
        reply = await self._scripts.run("schedule_request", keys, [name, msgspec.json.encode(request), MAX_REQUESTS])
        status = text(reply[0])
        if status == "missing":
            raise NotFound(f"no schedule {name!r}")
        if status == "full":
            raise InvalidInput(f"schedule {name!r} has {MAX_REQUESTS} requests queued already; try again later")
        return int(reply[1])

    # -- the scheduler loop ----------------------------------------------------------
    async def claim(self, limit: int, lease_ms: int, consumer: str) -> tuple[int, list[tuple[str, str]]]:
        """(server now, [(name, token)]) of the due schedules this worker now holds for lease_ms."""
        k = self.keys.sched
        reply = await self._scripts.run("schedule_claim", [k("due"), k("claims")], [limit, lease_ms, consumer])
        items = [text(x) for x in reply[1:]]
        return int(reply[0]), list(zip(items[::2], items[1::2]))

    async def requests(self, name: str, limit: int) -> list[Request]:
        return [decode_request(r) for r in await self.redis.lrange(self.keys.sched(f"req:{name}"), 0, limit - 1)]

    async def advance(self, name: str, token: str, next_ms: int, fields: Mapping[str, Any],
                      counters: Mapping[str, int], runs: Sequence[Run], handled: int) -> bool:
        """Write a tick's outcome if this worker still holds the claim; False when it lost it."""
        k = self.keys.sched
        keys = [k("due"), k("claims"), k(f"s:{name}"), k(f"runs:{name}"), k(f"req:{name}")]
        args = [name, token, next_ms, RUNS_KEPT, handled, *_flat(fields), *_flat(counters),
                *(msgspec.json.encode(r) for r in runs)]
        return int(await self._scripts.run("schedule_advance", keys, args)) == 1

    async def status(self, instance_id: str) -> str:
        """The instance's status, folded from its own stream ("none": no events yet)."""
        events = await self.store.read_events(instance_id)
        return fold_stored(INITIAL, ((e, ts) for _, e, ts in events)).status

    async def send(self, type_: str, instance_id: str, data: dict[str, Any], cmd_id: str) -> None:
        """XADD one command to the instance's partition inbox (the encoding of engine.client)."""
        fields = command_fields(type_, instance_id, data, cmd_id)
        await self.redis.xadd(self.keys.inbox(self.keys.partition(instance_id)), fields)  # type: ignore[arg-type]


def encode_json(value: Any) -> bytes:
    return orjson.dumps(msgspec.to_builtins(value))
