"""What is in Redis right now, for operators: consumer-group lag and pending
counts per partition, task streams, dead letters. Read-only; shared by the
metrics, `foldflow top` and `foldflow stuck`."""

from __future__ import annotations

import re
from collections.abc import Sequence

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from engine.store.keys import ACTIVITY_GROUP, ENGINE_GROUP, ROUTER_GROUP, Keys
from engine.store.replies import text


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


class GroupInfo:
    __slots__ = ("consumers", "group", "lag", "length", "pending", "stream")

    def __init__(self, stream: str, group: str, lag: int, pending: int, consumers: int, length: int) -> None:
        self.stream = stream
        self.group = group
        self.lag = lag  # -1: Redis cannot tell (after a trim or XDEL)
        self.pending = pending
        self.consumers = consumers
        self.length = length


async def group_info(redis: aioredis.Redis, streams: Sequence[str], group: str) -> dict[str, GroupInfo | None]:
    """One group's lag and pending count on each stream (None: no stream or no such group)."""
    if not streams:
        return {}
    pipe = redis.pipeline(transaction=False)
    for stream in streams:
        pipe.xinfo_groups(stream)
        pipe.xlen(stream)
    replies = await pipe.execute(raise_on_error=False)
    out: dict[str, GroupInfo | None] = {}
    for i, stream in enumerate(streams):
        groups, length = replies[2 * i], replies[2 * i + 1]
        out[stream] = None
        if isinstance(groups, ResponseError) or not isinstance(groups, list):
            continue
        for g in groups:
            row = {text(k): v for k, v in g.items()}
            if text(row.get("name", "")) != group:
                continue
            lag = row.get("lag")
            out[stream] = GroupInfo(stream, group, int(lag) if lag is not None else -1, int(row.get("pending", 0)),
                                    int(row.get("consumers", 0)), int(length) if isinstance(length, int) else 0)
    return out


async def task_streams(redis: aioredis.Redis, keys: Keys, partitions: Sequence[int] | None = None) -> dict[str, tuple[int, str]]:
    """Every task stream (key -> (partition, queue)), found with SCAN (operator tools only)."""
    wanted = set(range(keys.partitions) if partitions is None else partitions)
    pattern = "{" + _glob_escape(keys.prefix) + ":*}:tasks:*"
    out: dict[str, tuple[int, str]] = {}
    async for raw in redis.scan_iter(match=pattern, count=1000, _type="stream"):
        key = text(raw)
        try:
            p = keys.stream_partition(key)
        except ValueError:
            continue
        if p in wanted:
            out[key] = (p, key.split(":tasks:", 1)[1])
    lanes = await lane_streams(redis, keys, sorted(wanted))
    return {**out, **{s: pq for s, pq in lanes.items() if s in out}}


async def lane_streams(redis: aioredis.Redis, keys: Keys, partitions: Sequence[int],
                       queues: Sequence[str] | None = None) -> dict[str, tuple[int, str]]:
    """The priority lanes (key -> (partition, queue)) the partitions' lanes sets list, of ``queues`` when given."""
    pipe = redis.pipeline(transaction=False)
    for p in partitions:
        pipe.smembers(keys.lanes(p))
    out: dict[str, tuple[int, str]] = {}
    for p, members in zip(partitions, await pipe.execute()):
        for raw in members:
            queue = keys.lane_of(text(raw))[0]
            if queues is None or queue in queues:
                out[text(raw)] = (p, queue)
    return out


def add_lag(out: dict[tuple[str, str, str], tuple[int, int]], at: tuple[str, str, str], lag: int, pending: int) -> None:
    """Count a stream's lag and pending into ``at``, where a queue's lanes join its base stream (-1: unknown)."""
    before = out.get(at)
    if before is not None:
        lag = -1 if -1 in (lag, before[0]) else lag + before[0]
        pending += before[1]
    out[at] = (lag, pending)


async def partition_lag(redis: aioredis.Redis, keys: Keys, partitions: Sequence[int] | None = None,
                        queues: Sequence[str] | None = None) -> dict[tuple[str, str, str], tuple[int, int]]:
    """(group, partition, queue) -> (lag, pending) for inboxes, the events stream and task streams.

    Task streams: those of ``queues`` when given, else every one SCAN finds.
    """
    parts = list(range(keys.partitions) if partitions is None else partitions)
    out: dict[tuple[str, str, str], tuple[int, int]] = {}
    inboxes = [keys.inbox(p) for p in parts]
    for stream, info in (await group_info(redis, inboxes, ENGINE_GROUP)).items():
        if info is not None:
            out[(ENGINE_GROUP, str(keys.stream_partition(stream)), "")] = (info.lag, info.pending)
    events = (await group_info(redis, [keys.events], ROUTER_GROUP)).get(keys.events)
    if events is not None:
        out[(ROUTER_GROUP, "", "")] = (events.lag, events.pending)
    if queues is None:
        tasks = await task_streams(redis, keys, parts)
    else:
        tasks = {keys.tasks(p, q): (p, q) for q in queues for p in parts}
        tasks.update(await lane_streams(redis, keys, parts, queues))
    for stream, info in (await group_info(redis, sorted(tasks), ACTIVITY_GROUP)).items():
        if info is not None:
            p, q = tasks[stream]
            add_lag(out, (ACTIVITY_GROUP, str(p), q), info.lag, info.pending)
    return out


async def dead_letters(redis: aioredis.Redis, keys: Keys, partitions: Sequence[int] | None = None,
                       events: bool = True) -> dict[str, int]:
    parts = list(range(keys.partitions) if partitions is None else partitions)
    pipe = redis.pipeline(transaction=False)
    for p in parts:
        pipe.xlen(keys.dlq(p))
    if events:
        pipe.xlen(keys.events_dlq)
    replies = await pipe.execute()
    out = {str(p): int(n) for p, n in zip(parts, replies)}
    if events:
        out["events"] = int(replies[-1])
    return out


BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}


async def breaker_states(redis: aioredis.Redis, keys: Keys, services: Sequence[str]) -> dict[str, int]:
    """Each service's circuit breaker (engine/workers/breaker.py's hash): 0 closed, 1 half-open (a trial runs), 2 open."""
    services = sorted(set(services))
    if not services:
        return {}
    pipe = redis.pipeline(transaction=False)
    for service in services:
        pipe.hmget(keys.breaker(service), "state", "trial_until")
    replies = await pipe.execute()
    secs, micros = await redis.time()  # not in the pipeline: a cluster pipeline refuses TIME (no key)
    now = int(secs) * 1000 + int(micros) // 1000
    out: dict[str, int] = {}
    for service, (state, trial_until) in zip(services, replies):
        if state is None or text(state) != "open":
            out[service] = 0
        else:
            out[service] = 1 if int(trial_until or 0) > now else 2
    return out
