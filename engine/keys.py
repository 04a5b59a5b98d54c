"""Every Redis key foldflow touches, in one place (streams.md says it for people).

Everything one instance touches in one atomic step lives in its partition and
shares the partition's hash tag ``{<prefix>:<p>}``, so the same Lua scripts run
on one Redis and on Redis Cluster without CROSSSLOT errors.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from typing import Any

import orjson

# Instance ids travel inside key names and newline-separated timer members, so
# they are restricted to a safe alphabet (streams.md, "Instance ids").
INSTANCE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@+-]{0,199}$")
QUEUE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@/+-]{0,199}$")

ENGINE_GROUP = "engine"
ROUTER_GROUP = "router"
ACTIVITY_GROUP = "activities"
RELAY_GROUP = "relay"


def entry_key(entry_id: str) -> tuple[int, int]:
    """A stream entry id as (ms, seq), so ids compare in stream order; (0, 0) when malformed."""
    ms, _, seq = entry_id.partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        return (0, 0)


def partition_of(instance_id: str, partitions: int) -> int:
    return zlib.crc32(instance_id.encode("utf-8")) % partitions


class Keys:
    """Key names for one deployment (a prefix and a partition count)."""

    __slots__ = ("prefix", "partitions", "_tags")

    def __init__(self, prefix: str = "ff", partitions: int = 8) -> None:
        if partitions < 1:
            raise ValueError("partitions must be >= 1")
        self.prefix = prefix
        self.partitions = partitions
        self._tags = tuple("{%s:%d}" % (prefix, p) for p in range(partitions))

    # -- global keys -------------------------------------------------------
    @property
    def meta(self) -> str:
        return f"{self.prefix}:meta"

    @property
    def events(self) -> str:
        return f"{self.prefix}:events"

    def definition(self, name: str) -> str:
        return f"{self.prefix}:def:{name}"

    @property
    def definitions_index(self) -> str:
        return f"{self.prefix}:defs"

    # -- per partition -----------------------------------------------------
    def partition(self, instance_id: str) -> int:
        return partition_of(instance_id, self.partitions)

    def tag(self, p: int) -> str:
        return self._tags[p]

    def inbox(self, p: int) -> str:
        return f"{self._tags[p]}:inbox"

    def feed(self, p: int) -> str:
        return f"{self._tags[p]}:feed"

    def timers(self, p: int) -> str:
        return f"{self._tags[p]}:timers"

    def dlq(self, p: int) -> str:
        return f"{self._tags[p]}:dlq"

    def instance(self, instance_id: str, p: int | None = None) -> str:
        if p is None:
            p = self.partition(instance_id)
        return f"{self._tags[p]}:i:{instance_id}"

    def tasks(self, p: int, queue: str) -> str:
        return f"{self._tags[p]}:tasks:{queue}"

    def snapshot(self, p: int, instance_id: str) -> str:
        return f"{self._tags[p]}:snap:{instance_id}"

    def finished(self, p: int) -> str:
        return f"{self._tags[p]}:finished"

    def catchups(self, p: int) -> str:
        """Sorted set: event waits registered whose catch-up is not confirmed done yet."""
        return f"{self._tags[p]}:catchup"

    def outbox(self, p: int) -> str:
        return f"{self._tags[p]}:outbox"

    def lease(self, p: int) -> str:
        return f"{self._tags[p]}:lease"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"

    def wait_shapes(self, p: int, event_type: str) -> str:
        return f"{self._tags[p]}:waitshapes:{event_type}"

    def wait_index(self, p: int, event_type: str, shape: tuple[str, ...], values: list[Any]) -> str:
        return f"{self._tags[p]}:wait:{event_type}:{filter_digest(shape, values)}"

    def event_shapes(self, event_type: str) -> str:
        """Filter shapes definitions wait for this event type with (written at registration)."""
        return f"{self.prefix}:evshapes:{event_type}"

    def event_index(self, event_type: str, shape: tuple[str, ...], values: list[Any]) -> str:
        """Recent events of a type by filter values: lets a wait find an event published before it began."""
        return f"{self.prefix}:evidx:{event_type}:{filter_digest(shape, values)}"

    def all_inboxes(self) -> list[str]:
        return [self.inbox(p) for p in range(self.partitions)]

    def stream_partition(self, key: str) -> int:
        """Partition of a partition key (inbox, task stream) as read back from XREADGROUP."""
        return int(key[len(self.prefix) + 2 : key.index("}")])

    inbox_partition = stream_partition


def filter_shape(filter_: dict[str, Any]) -> tuple[str, ...]:
    return tuple(sorted(filter_))


def encode_shape(shape: tuple[str, ...]) -> str:
    return orjson.dumps(list(shape)).decode()


def wait_signature(event_type: str, filter_: dict[str, Any]) -> str:
    """Names what a wait waits for: its event type and filter values."""
    shape = filter_shape(filter_)
    return f"{event_type}:{filter_digest(shape, [filter_[k] for k in shape])}"


def filter_digest(shape: tuple[str, ...], values: list[Any]) -> str:
    """Digest of the filter values in shape order; equal JSON values, equal digest."""
    return hashlib.sha1(orjson.dumps([list(shape), values], option=orjson.OPT_SORT_KEYS)).hexdigest()
