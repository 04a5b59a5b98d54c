"""The Redis event store: instance streams, their partition feeds, and the
scripts that change them atomically. Redis errors
become the error tree through engine.store.errors.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgspec
import orjson
import redis.asyncio as aioredis
from redis.crc import key_slot
from redis.exceptions import ResponseError

from engine.core.evolve import fold_stored
from engine.core.model import INITIAL, Event, State, decode_event, encode
from engine.errors import ConfigError, DefinitionConflict, InvariantBroken, PoisonMessage, StoreUnavailable
from engine.store.connection import is_cluster
from engine.store.errors import TRANSIENT
from engine.store.keys import ACTIVITY_GROUP, Keys
from engine.store.lua import ScriptRunner
from engine.store.plan import Effects
from engine.store.replies import text

decode_snapshot = msgspec.json.Decoder(State).decode

log = logging.getLogger("foldflow.store")


class AppendRequest:
    """One instance's decision: events, effects and the inbox entries it answers."""

    __slots__ = (
        "catchups",
        "effects",
        "entry_ids",
        "events",
        "expected",
        "expected_last",
        "instance_id",
        "p",
        "snapshot",
        "ts",
    )

    def __init__(
        self, instance_id: str, p: int, expected: int, entry_ids: Sequence[str],
        events: list[Event], effects: Effects, ts: int, snapshot: bytes | None = None,
        expected_last: str | None = None, catchups: Sequence[str] = (),
    ) -> None:
        self.instance_id = instance_id
        self.p = p
        self.expected = expected
        # The stream's last entry id the decision saw; None skips the check (a new instance).
        self.expected_last = expected_last
        self.entry_ids = entry_ids
        self.events = events
        self.effects = effects
        self.ts = ts
        self.snapshot = snapshot  # the folded state after these events, when one is due
        # members for {ff:p}:catchup: the event waits these events register, until caught up
        self.catchups = catchups


class AppendOutcome(enum.Enum):
    """What became of one decision sent to append.lua, and which AppendResult fields say more."""

    OK = "ok"  # written; version and last_id are the stream's after it
    CONFLICT = "conflict"  # nothing written: version and last_id are the stream's as found
    NOT_OWNER = "not_owner"  # nothing written: entry_id is no longer pending for this consumer
    FENCED = "fenced"  # nothing written: holder holds the partition's lease (None: nobody)
    UNAVAILABLE = "unavailable"  # its call failed in transit (error): applied whole or not at all


# append.lua's reply codes, one per decision (see its "Returns")
_WRITTEN, _STALE, _NOT_PENDING, _FENCED = 1, 0, -1, -2


class AppendResult:
    """One decision's outcome; each other field is set only for the outcomes named beside it."""

    __slots__ = ("entry_id", "error", "holder", "last_id", "outcome", "version")

    def __init__(
        self, outcome: AppendOutcome, *, version: int | None = None, last_id: str | None = None,
        entry_id: str | None = None, holder: str | None = None, error: str | None = None,
    ) -> None:
        self.outcome = outcome
        self.version = version  # the stream's version (OK, CONFLICT)
        self.last_id = last_id  # the id of the stream's last entry (OK, CONFLICT); None: no entry, or none written
        self.entry_id = entry_id  # the inbox entry that is no longer ours (NOT_OWNER)
        self.holder = holder  # the lease's holder (FENCED)
        self.error = error  # why the call failed (UNAVAILABLE)


def event_type(event: Event) -> str:
    return _tag_of(type(event))


_TAGS: dict[type, str] = {}


def _tag_of(cls: type) -> str:
    tag = _TAGS.get(cls)
    if tag is None:
        tag = _TAGS[cls] = str(cls.__struct_config__.tag)  # type: ignore[attr-defined]
    return tag


class Store(ScriptRunner):
    """Instance streams and the scripts that change them; scripts run through ScriptRunner."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, *, wait_replicas: int = 0,
                 wait_timeout_ms: int = 1000) -> None:
        super().__init__(redis, wait_replicas=wait_replicas, wait_timeout_ms=wait_timeout_ms)
        self.keys = keys

    async def check_durability(self, require_fsync_always: bool) -> None:
        """Refuse to run with weaker durability than the deployment asked for."""
        if self.wait_replicas and is_cluster(self.redis):
            raise ConfigError("FOLDFLOW_WAIT_REPLICAS is not supported on Redis Cluster: WAIT covers one "
                              "node's connection; use appendfsync always on every master instead")
        if not require_fsync_always:
            return
        try:
            config: Any = await self.redis.config_get("append*")
        except ResponseError as exc:
            raise ConfigError(f"FOLDFLOW_REQUIRE_FSYNC_ALWAYS is set but CONFIG GET is refused ({exc}); "
                              "it cannot be checked") from exc
        values = {text(k): text(v) for k, v in config.items()}
        appendonly, fsync = values.get("appendonly", "no"), values.get("appendfsync", "")
        if appendonly != "yes" or fsync != "always":
            raise ConfigError(f"FOLDFLOW_REQUIRE_FSYNC_ALWAYS is set but Redis runs appendonly={appendonly} "
                              f"appendfsync={fsync}: set appendonly yes and appendfsync always, or unset it")

    # -- deployment ---------------------------------------------------------
    async def check_meta(self) -> None:
        """Record the partition count once; refuse to run against a different one."""
        await self.redis.hsetnx(self.keys.meta, "partitions", self.keys.partitions)
        stored = await self.redis.hget(self.keys.meta, "partitions")
        if stored is None or int(stored) != self.keys.partitions:
            raise ConfigError(
                f"{self.keys.meta} says partitions={text(stored or b'?')} but this process was started "
                f"with FOLDFLOW_PARTITIONS={self.keys.partitions}: every process of a deployment "
                "must use the recorded count"
            )

    async def ensure_group(self, stream: str, group: str, start: str = "0") -> None:
        try:
            await self.redis.xgroup_create(stream, group, id=start, mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # -- instance streams ---------------------------------------------------
    async def read_events(self, instance_id: str, after: str | None = None) -> list[tuple[str, Event, int]]:
        key = self.keys.instance(instance_id)
        entries: Any = await self.redis.xrange(key, min=f"({after}" if after else "-", max="+")
        return [decode_stored(instance_id, eid, fields) for eid, fields in entries]

    async def read_page(self, instance_id: str, after: str | None, count: int) -> list[tuple[str, int, Event, int]]:
        """Up to count events after an entry id, each with its version, so a page of a long
        history is numbered without reading the history from its start."""
        key = self.keys.instance(instance_id)
        entries: Any = await self.redis.xrange(key, min=f"({after}" if after else "-", max="+", count=count)
        return [(eid, _version_of(fields), event, ts) for (_, fields), (eid, event, ts)
                in zip(entries, (decode_stored(instance_id, e, f) for e, f in entries))]

    async def load_many(
        self, wanted: Sequence[tuple[str, State, str | None]], *, snapshots: bool = True
    ) -> list[tuple[State, str | None] | PoisonMessage]:
        """Catch each (instance, state, last entry id) up with its stream.

        An instance read from scratch starts from its snapshot when it has one, so
        a long history costs one snapshot plus the events since, not a full replay.
        """
        if snapshots:
            wanted = await self._from_snapshots(wanted)
        pipe = self.redis.pipeline(transaction=False)
        for iid, _state, after in wanted:
            pipe.xrange(self.keys.instance(iid), min=f"({after}" if after else "-", max="+")
        try:
            replies = await pipe.execute()
        except TRANSIENT as exc:
            raise StoreUnavailable(f"redis unavailable loading instances: {exc}") from exc
        out: list[tuple[State, str | None] | PoisonMessage] = []
        broken: list[int] = []
        for (iid, state, after), entries in zip(wanted, replies):
            if after is not None and entries and _version_of(entries[0][1]) != state.version + 1:
                # The tail does not continue the state we hold: Redis lost the writes
                # that state was folded from and the stream has grown a different history
                # since. Only a replay from the start is right.
                broken.append(len(out))
                out.append(PoisonMessage("diverged"))
                continue
            try:
                stored = [decode_stored(iid, eid, fields) for eid, fields in entries]
            except PoisonMessage as exc:
                out.append(exc)
                continue
            last = text(entries[-1][0]) if entries else after
            out.append((fold_stored(state, ((e, ts) for _, e, ts in stored)), last))
        if broken:
            again = await self.load_many([(wanted[i][0], INITIAL, None) for i in broken], snapshots=False)
            for i, loaded in zip(broken, again):
                out[i] = loaded
        return out

    async def _from_snapshots(
        self, wanted: Sequence[tuple[str, State, str | None]]
    ) -> list[tuple[str, State, str | None]]:
        fresh = [i for i, (_, _, after) in enumerate(wanted) if after is None]
        if not fresh:
            return list(wanted)
        pipe = self.redis.pipeline(transaction=False)
        for i in fresh:
            iid = wanted[i][0]
            pipe.hmget(self.keys.snapshot(self.keys.partition(iid), iid), ["version", "last_id", "state"])
        try:
            replies = await pipe.execute()
        except TRANSIENT as exc:
            raise StoreUnavailable(f"redis unavailable loading snapshots: {exc}") from exc
        out = list(wanted)
        for i, (version, last_id, raw) in zip(fresh, replies):
            if raw is None or last_id is None:
                continue
            try:
                state = decode_snapshot(raw)
            except (msgspec.ValidationError, msgspec.DecodeError):
                continue  # written by another version of the State struct: replay instead
            if state.version == int(version):
                out[i] = (wanted[i][0], state, text(last_id))
        return out

    async def load(self, instance_id: str) -> State:
        events = await self.read_events(instance_id)
        return fold_stored(INITIAL, ((e, ts) for _, e, ts in events))

    async def append_many(
        self, reqs: Sequence[AppendRequest], group: str, consumer: str, *, fenced: bool = False
    ) -> list[AppendResult]:
        """Apply decisions, one append.lua call per partition (each decision atomic on its
        own); fenced: only while this consumer holds each partition's lease. Results come
        back in the order of ``reqs``; a decision whose call failed in transit while others
        got through is UNAVAILABLE (StoreUnavailable when none got through)."""
        order = _calls_of(reqs)
        calls = [self._append_call(p, [reqs[i] for i in idx], group, consumer, fenced) for p, idx in order]
        replies = await self.run_many("append", calls, partial=True)
        out: list[AppendResult | None] = [None] * len(reqs)
        for (_, idx), reply in zip(order, replies):
            if isinstance(reply, Exception):
                for i in idx:
                    out[i] = AppendResult(AppendOutcome.UNAVAILABLE, error=str(reply))
                continue
            for j, i in enumerate(idx):
                out[i] = _result(*reply[3 * j: 3 * j + 3])
        missing = [i for i, r in enumerate(out) if r is None]
        if missing:
            raise InvariantBroken(f"append.lua answered {len(reqs) - len(missing)} of {len(reqs)} decisions")
        return out  # type: ignore[return-value]

    def _append_call(self, p: int, reqs: Sequence[AppendRequest], group: str, consumer: str,
                     fenced: bool) -> tuple[list[str], list[Any]]:
        k = self.keys
        keys = [k.feed(p), k.inbox(p), k.timers(p), k.lease(p)]
        index: dict[str, int] = {}

        def ref(key: str) -> int:
            i = index.get(key)
            if i is None:
                keys.append(key)
                i = index[key] = len(keys)
            return i

        args: list[Any] = [group, consumer, "1" if fenced else "0", len(reqs)]
        for r in reqs:
            args += (ref(k.instance(r.instance_id, p)), r.instance_id, r.expected, r.expected_last or "", r.ts,
                     len(r.entry_ids), *r.entry_ids, len(r.events))
            for e in r.events:
                args += (_tag_of(type(e)), encode(e))
            ops = _effect_ops(r, k, p, ref)
            args.append(len(ops))
            args += ops
        return keys, args

    # -- dead letters, timers ----------------------------------------------
    async def dead_letter_many(
        self, items: Iterable[tuple[str, str, str, str, str, dict[bytes, bytes], int]], consumer: str, ts: int
    ) -> None:
        """items: (source stream, dlq, group, entry id, reason, original fields, deliveries)."""
        calls = []
        for source, dlq, group, entry_id, reason, fields, deliveries in items:
            original = orjson.dumps({_text(k): _text(v) for k, v in fields.items()})
            calls.append(([source, dlq], [group, consumer, entry_id, reason, ts, original, deliveries]))
        if is_cluster(self.redis):
            # No script may touch two slots there, and ff:events / ff:events:dlq have no common hash tag.
            apart = [c for c in calls if key_slot(c[0][0].encode()) != key_slot(c[0][1].encode())]
            calls = [c for c in calls if c not in apart]
            for (source, dlq), args in apart:
                await self._dead_letter_apart(source, dlq, args)
        await self.run_many("dead_letter", calls)

    async def _dead_letter_apart(self, source: str, dlq: str, args: list[Any]) -> None:
        """dead_letter.lua as three commands, letter before XACK: a crash in between leaves the
        entry pending, to be dead-lettered again (twice, never lost)."""
        group, consumer, entry_id, reason, ts, original, deliveries = args
        try:
            if await self.redis.xpending_range(source, group, entry_id, entry_id, 1, consumername=consumer):
                await self.redis.xadd(dlq, {"reason": reason, "source": source, "entry_id": entry_id, "group": group,
                                            "ts": ts, "deliveries": deliveries, "fields": original})
                await self.redis.xack(source, group, entry_id)
        except TRANSIENT as exc:
            raise StoreUnavailable(f"redis unavailable dead-lettering {entry_id} of {source}: {exc}") from exc

    async def leases(self, op: str, partitions: Sequence[int], holder: str, ttl_ms: int) -> list[bool]:
        calls = [([self.keys.lease(p)], [op, holder, ttl_ms]) for p in partitions]
        return [bool(int(r)) for r in await self.run_many("lease", calls)]

    async def fire_timers(self, limit: int = 256) -> list[tuple[int, int]]:
        calls = [([self.keys.timers(p), self.keys.inbox(p)], [limit]) for p in range(self.keys.partitions)]
        return [(int(r[0]), int(r[1])) for r in await self.run_many("fire_timers", calls)]

    # -- definitions -------------------------------------------------------
    async def register_definition(self, name: str, version: str, body: bytes, sort_key: str,
                                  now_ms: int | None = None) -> bool:
        """Store (name, version) immutably; True when new, False when already the same."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        result = int(await self.run("register_definition", [self.keys.definition(name)],
                                    [version, body, sort_key, now]))
        if result < 0:
            raise DefinitionConflict(
                f"definition {name!r} version {version!r} is already registered with a different body; "
                "register the change under a new version"
            )
        await self.redis.sadd(self.keys.definitions_index, name)
        return result == 1

    async def definition_body(self, name: str, version: str | None) -> tuple[str, bytes] | None:
        key = self.keys.definition(name)
        if version is None:
            latest = await self.redis.hget(key, "latest")
            if latest is None:
                return None
            version = text(latest)
        body: Any = await self.redis.hget(key, f"v:{version}")
        return None if body is None else (version, bytes(body))

    async def definition_versions(self, name: str) -> list[str]:
        fields = await self.redis.hkeys(self.keys.definition(name))
        return [text(f)[2:] for f in fields if text(f).startswith("v:")]


def _calls_of(reqs: Sequence[AppendRequest]) -> list[tuple[int, list[int]]]:
    """Indexes of ``reqs`` grouped into calls: one per partition, and one decision per instance
    in a call (append.lua does a call's removals last, which is only order-free across instances)."""
    order: list[tuple[int, list[int]]] = []
    open_calls: dict[int, tuple[list[int], set[str]]] = {}
    for i, r in enumerate(reqs):
        call = open_calls.get(r.p)
        if call is None or r.instance_id in call[1]:
            call = open_calls[r.p] = ([], set())
            order.append((r.p, call[0]))
        call[0].append(i)
        call[1].add(r.instance_id)
    return order


def _result(code: Any, a: Any, b: Any) -> AppendResult:
    """One decision's (code, a, b) triple of append.lua's reply."""
    code = int(code)
    if code == _WRITTEN:
        return AppendResult(AppendOutcome.OK, version=int(a), last_id=text(b) or None)
    if code == _STALE:
        return AppendResult(AppendOutcome.CONFLICT, version=int(a), last_id=text(b) or None)
    if code == _FENCED:
        return AppendResult(AppendOutcome.FENCED, holder=text(a) or None)
    return AppendResult(AppendOutcome.NOT_OWNER, entry_id=text(a))  # _NOT_PENDING


def _effect_ops(r: AppendRequest, k: Keys, p: int, ref: Callable[[str], int]) -> list[Any]:
    """A decision's effects as append.lua's op list (KEYS and ARGV: scripts/append.lua's header)."""
    ops: list[Any] = []
    fx = r.effects
    for key, task_id, step, attempt, data in fx.tasks:
        lane = fx.lanes.get(key)
        if lane:  # a priority lane: registered with its group first (scripts/append.lua, op 'L')
            ops += ("L", ref(key), task_id, step, attempt, data, lane, ref(k.lanes(p)), ACTIVITY_GROUP)
        else:
            ops += ("T", ref(key), task_id, step, attempt, data)
    for score, member in fx.timers_add:
        ops += ("Z", score, member)
    for member in fx.timers_rem:
        ops += ("z", member)
    for key, member in fx.sadd:
        ops += ("S", ref(key), member)
    for key, member in fx.srem:
        ops += ("s", ref(key), member)
    if r.snapshot is not None and r.events:
        ops += ("P", ref(k.snapshot(p, r.instance_id)), r.snapshot)
    if fx.finished:
        ops += ("F", ref(k.finished(p)))
    for target, command in fx.outbox:
        ops += ("O", ref(k.outbox(p)), target, command["type"], command["id"], command["data"], command["cmd_id"])
    for member in r.catchups:
        ops += ("C", ref(k.catchups(p)), member)
    return ops


def _text(value: bytes | str) -> str:
    """A field as text for a dead letter: UTF-8 as is, anything else as its repr."""
    if isinstance(value, str):
        return value
    try:
        return value.decode()
    except UnicodeDecodeError:
        return repr(value)


def _version_of(fields: Any) -> int:
    try:
        return int(fields[b"version"])
    except (KeyError, ValueError, TypeError):
        return -1


def decode_stored(instance_id: str, entry_id: bytes | str, fields: Any) -> tuple[str, Event, int]:
    """One instance stream entry -> (entry id, event, ts); PoisonMessage when unreadable."""
    try:
        return text(entry_id), decode_event(fields[b"data"]), int(fields[b"ts"])
    except Exception as exc:
        raise PoisonMessage(
            f"instance stream of {instance_id!r} has an unreadable entry {text(entry_id)}: {exc}"
        ) from exc
