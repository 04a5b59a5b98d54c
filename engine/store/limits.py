"""Per-service limits across the cluster, the Redis side: the declared limits of each
service (``{ff:limits}:config``, with a version counter so a worker re-reads them
with one GET) and the script that enforces them (scripts/limits.lua: in-flight
permits leased per task id, a token bucket, the tasks waiting for either).

A service here is a task queue: any service a step calls, whether a Python
handler serves it, the registry or the environment. The limits are enforced by
the activity workers (engine/workers/limits.py), judged by the Redis clock.
"""

from __future__ import annotations

import datetime
import re
import time
from collections.abc import Sequence
from typing import Any

import msgspec
import orjson

from engine.core.definition.model import parse_duration_ms
from engine.errors import EngineError, StoreUnavailable
from engine.store.connection import Redis
from engine.store.errors import TRANSIENT
from engine.store.keys import Keys
from engine.store.lua import Script, ScriptRunner
from engine.store.replies import text

SERVICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
MAX_IN_FLIGHT = 1_000_000
MAX_RATE = 1_000_000_000
PER_MS = (1_000, 7 * 86_400_000)  # a rate's window: 1 s to 7 days
LEASE_MS = (1_000, 3_600_000)  # a permit's lease: 1 s to 1 h
DEFAULT_LEASE_MS = 30_000
STALE_WAIT_MS = 30_000  # a waiting entry its worker has not refreshed for this long is dropped (the worker died)
UNITS = (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000))


class Rate(msgspec.Struct, frozen=True, kw_only=True):
    limit: int
    per_ms: int


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """One service's limits (None: not limited that way)."""

    in_flight: int | None = None
    rate: Rate | None = None
    lease_ms: int = DEFAULT_LEASE_MS

    @property
    def active(self) -> bool:
        return self.in_flight is not None or self.rate is not None

    def describe_rate(self) -> str:
        return "" if self.rate is None else f"{self.rate.limit} per {duration_text(self.rate.per_ms)}"


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    in_flight: int  # permits held now (0 without an in-flight limit)
    tokens: float | None  # tokens in the bucket now (None without a rate)
    waiting_in_flight: int  # tasks waiting for a permit
    waiting_rate: int  # tasks waiting for a token
    now_ms: int  # the Redis clock


class Waiting(msgspec.Struct, frozen=True, kw_only=True):
    reason: str  # "in_flight" | "rate"
    since_ms: int
    seen_ms: int
    info: dict[str, Any]


class InvalidLimits(EngineError, ValueError):
    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(f"{path}: {message}" for path, message in self.problems))


decode_limits = msgspec.json.Decoder(Limits).decode


def duration_text(ms: int) -> str:
    for unit, size in UNITS:
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def check_service(service: str) -> str:
    if not SERVICE_NAME.fullmatch(service):
        raise InvalidLimits([("service", f"{service!r} is not a service name (A-Z a-z 0-9 . _ -, at most 100)")])
    return service


def _count(value: Any, path: str, top: int, problems: list[tuple[str, str]]) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
        problems.append((path, f"must be a whole number from 1 to {top}, got {value!r}"))
        return 1
    return value


def _duration(value: Any, path: str, bounds: tuple[int, int], problems: list[tuple[str, str]]) -> int:
    try:
        ms = parse_duration_ms(value)
    except ValueError as exc:
        problems.append((path, str(exc)))
        return bounds[0]
    if not bounds[0] <= ms <= bounds[1]:
        problems.append((path, f"must be from {duration_text(bounds[0])} to {duration_text(bounds[1])}, got {value!r}"))
    return ms


def parse_rate_text(value: str) -> dict[str, Any]:
    """``100/1m`` (or ``100/m``) as the API's rate object."""
    count, sep, per = value.partition("/")
    if not sep or not count.strip().isdigit():
        raise InvalidLimits([("rate", f"{value!r}: expected LIMIT/PER, e.g. 100/1m or 10/1s")])
    per = per.strip()
    return {"limit": int(count), "per": per if per[:1].isdigit() else f"1{per}"}


def parse_limits(body: Any) -> Limits:
    """Limits from the API's JSON form: {"in_flight": N | null, "rate": {"limit", "per"} | null, "lease": "30s"}."""
    problems: list[tuple[str, str]] = []
    if not isinstance(body, dict):
        raise InvalidLimits([("", "expected an object with in_flight and/or rate")])
    for key in sorted(set(body) - {"in_flight", "rate", "lease"}):
        problems.append((key, "unknown field (expected in_flight, rate, lease)"))
    in_flight = None if body.get("in_flight") is None else _count(body["in_flight"], "in_flight", MAX_IN_FLIGHT, problems)
    rate = None
    raw = body.get("rate")
    if isinstance(raw, dict):
        for key in sorted(set(raw) - {"limit", "per"}):
            problems.append((f"rate.{key}", "unknown field (expected limit, per)"))
        rate = Rate(limit=_count(raw.get("limit"), "rate.limit", MAX_RATE, problems),
                    per_ms=_duration(raw.get("per", "1s"), "rate.per", PER_MS, problems))
    elif raw is not None:
        problems.append(("rate", 'expected {"limit": 100, "per": "1m"} or null'))
    lease = DEFAULT_LEASE_MS if body.get("lease") is None else _duration(body["lease"], "lease", LEASE_MS, problems)
    if problems:
        raise InvalidLimits(problems)
    return Limits(in_flight=in_flight, rate=rate, lease_ms=lease)


def limits_view(limits: Limits) -> dict[str, Any]:
    """The API's JSON form of stored limits."""
    rate = None if limits.rate is None else {"limit": limits.rate.limit, "per": duration_text(limits.rate.per_ms),
                                             "per_ms": limits.rate.per_ms}
    return {"in_flight": limits.in_flight, "rate": rate, "lease": duration_text(limits.lease_ms),
            "lease_ms": limits.lease_ms}


def decode_waiting(raw: Any) -> Waiting | None:
    parts = text(raw).split("\n", 3)
    if len(parts) < 4:
        return None
    try:
        info = orjson.loads(parts[3])
        return Waiting(reason=parts[0], since_ms=int(parts[1]), seen_ms=int(parts[2]),
                       info=info if isinstance(info, dict) else {})
    except ValueError:
        return None


def limits_runner(redis: Redis) -> ScriptRunner:
    """A script runner that knows limits.lua (the API and the CLI use one of their own)."""
    runner = ScriptRunner(redis)
    add_script(runner)
    return runner


def add_script(runner: ScriptRunner) -> None:
    for name in ("limits", "touch_task"):
        runner.scripts.setdefault(name, Script(name))


class LimitStore:
    """Declared limits and the live state of limited services."""

    def __init__(self, runner: ScriptRunner, keys: Keys) -> None:
        add_script(runner)
        self.runner = runner
        self.redis = runner.redis
        self.keys = keys

    async def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return await fn(*args)
        except TRANSIENT as exc:
            raise StoreUnavailable(f"redis unavailable reading limits: {exc}") from exc

    async def put(self, service: str, limits: Limits) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.keys.limit_configs, check_service(service), msgspec.json.encode(limits))
        pipe.incr(self.keys.limit_version)
        await self._call(pipe.execute)

    async def remove(self, service: str) -> bool:
        removed = await self._call(self.redis.hdel, self.keys.limit_configs, check_service(service))
        if removed:
            await self._call(self.redis.incr, self.keys.limit_version)
        return bool(removed)

    async def version(self) -> int:
        raw = await self._call(self.redis.get, self.keys.limit_version)
        return int(raw or 0)

    async def get(self, service: str) -> Limits | None:
        raw = await self._call(self.redis.hget, self.keys.limit_configs, service)
        return None if raw is None else _decoded(raw)

    async def all(self) -> dict[str, Limits]:
        rows = await self._call(self.redis.hgetall, self.keys.limit_configs)
        found = {text(k): _decoded(v) for k, v in rows.items()}
        return {k: v for k, v in sorted(found.items()) if v is not None}

    async def acquire(self, service: str, task_id: str, limits: Limits, info: bytes, poll_ms: int) -> tuple[int, str]:
        """0 and "" when the task may run (it holds its permit and took its token), else ms to wait and why."""
        rate = limits.rate
        granted, wait_ms, reason = await self.runner.run("limits", self.keys.limit_keys(service), [
            "acquire", task_id, limits.in_flight or 0, limits.lease_ms, rate.limit if rate else 0,
            rate.per_ms if rate else 1, poll_ms, info])
        return (0, "") if int(granted) == 1 else (max(1, int(wait_ms)), text(reason))

    async def renew(self, service: str, task_id: str, lease_ms: int) -> None:
        await self.runner.run("limits", self.keys.limit_keys(service), ["renew", task_id, lease_ms])

    async def release(self, service: str, task_id: str) -> None:
        await self.runner.run("limits", self.keys.limit_keys(service), ["release", task_id])

    async def unwait(self, service: str, task_id: str) -> None:
        await self.runner.run("limits", self.keys.limit_keys(service), ["unwait", task_id])

    async def usage(self, service: str, limits: Limits | None) -> Usage:
        rate = limits.rate if limits is not None else None
        held, tokens, on_permit, on_rate, now = await self.runner.run("limits", self.keys.limit_keys(service), [
            "usage", rate.limit if rate else 0, rate.per_ms if rate else 1, STALE_WAIT_MS])
        return Usage(in_flight=int(held), tokens=None if int(tokens) < 0 else int(tokens) / 1000,
                     waiting_in_flight=int(on_permit), waiting_rate=int(on_rate), now_ms=int(now))

    async def touch(self, stream: str, group: str, consumer: str, entry_id: str) -> bool:
        """Reset a pending task's idle time while this consumer holds it; False when it does not."""
        return bool(await self.runner.run("touch_task", [stream], [group, consumer, entry_id]))

    async def waiting(self, service: str, task_id: str) -> Waiting | None:
        raw = await self._call(self.redis.hget, self.keys.limit_keys(service)[2], task_id)
        return None if raw is None else decode_waiting(raw)


def _decoded(raw: Any) -> Limits | None:
    try:
        return decode_limits(raw)
    except msgspec.DecodeError:
        return None  # not written by foldflow: as if not limited


async def waiting_reason(store: LimitStore, service: str, task_id: str) -> str | None:
    """Why a task waits for its service's limits, in words (``foldflow stuck``); None when it does not."""
    seen = await store.waiting(service, task_id)
    now = time.time_ns() // 1_000_000
    if seen is None or seen.seen_ms < now - STALE_WAIT_MS:
        return None  # not waiting, or its worker died while it waited (the task is redelivered)
    limits = await store.get(service) or Limits()
    since = datetime.datetime.fromtimestamp(seen.since_ms / 1000, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    waited = f"waiting since {since} ({max(0, now - seen.since_ms) / 1000:.0f}s)"
    if seen.reason == "rate":
        return f"rate limited: service {service!r} allows {limits.describe_rate() or 'a rate'}; {waited}"
    return f"service {service!r} is at its in-flight limit ({limits.in_flight}); {waited}"
