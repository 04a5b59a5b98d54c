"""Every Redis key of the write side, in one place (streams.md says it for people; the read
side keeps its own in projections/keys.py).

Everything one instance touches in one atomic step lives in its partition and
shares the partition's hash tag ``{<prefix>:<p>}``, so the same Lua scripts run
on one Redis and on Redis Cluster without CROSSSLOT errors.
"""

from __future__ import annotations

import hashlib
from typing import Any

from engine.core.ids import LANE_SUFFIX_RE, filter_digest, partition_of
from engine.errors import ConfigError

ENGINE_GROUP = "engine"
ROUTER_GROUP = "router"
ACTIVITY_GROUP = "activities"
RELAY_GROUP = "relay"


class Keys:
    """Key names for one deployment (a prefix and a partition count)."""

    __slots__ = ("_tags", "partitions", "prefix")

    def __init__(self, prefix: str = "ff", partitions: int = 8) -> None:
        if partitions < 1:
            raise ConfigError(f"partitions must be >= 1, got {partitions}")
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

    def published(self, event_id: str) -> str:
        """The entry id an event's own id was published as (dedupe and lookup), in the slot of `events`."""
        return "{%s}:eid:%s" % (self.events, event_id)

    @property
    def events_dlq(self) -> str:
        """Dead letters of the router: external events it could not route."""
        return f"{self.prefix}:events:dlq"

    def breaker(self, service: str) -> str:
        """A service's circuit breaker, shared by every activity worker."""
        return f"{self.prefix}:breaker:{service}"

    def heartbeat(self, consumer: str) -> str:
        return f"{self.prefix}:hb:{consumer}"

    @property
    def heartbeats(self) -> str:
        """Sorted set of every role process's consumer name, scored by its last beat."""
        return f"{self.prefix}:heartbeats"

    def definition(self, name: str) -> str:
        return f"{self.prefix}:def:{name}"

    @property
    def definitions_index(self) -> str:
        return f"{self.prefix}:defs"

    @property
    def definition_ids(self) -> str:
        """Hash: the UUID of every workflow and of every step of it -> the workflow's name."""
        return f"{self.prefix}:defids"

    # -- the service registry: one hash tag, so one script changes them together on Cluster
    @property
    def service_records(self) -> str:
        """Hash: service id -> its record (JSON)."""
        return "{%s:svc}:records" % self.prefix

    @property
    def service_names(self) -> str:
        """Hash: service name -> its id."""
        return "{%s:svc}:names" % self.prefix

    @property
    def service_version(self) -> str:
        """Counter bumped by every register, update and remove: one GET tells a worker whether to re-read."""
        return "{%s:svc}:version" % self.prefix

    def service_checks(self, service_id: str) -> str:
        """Hash: instance url -> its last health check (JSON)."""
        return "{%s:svc}:checks:%s" % (self.prefix, service_id)

    def service_checking(self, service_id: str) -> str:
        """SET NX PX lock: the one process checking this service this interval."""
        return "{%s:svc}:checking:%s" % (self.prefix, service_id)

    @property
    def service_queues(self) -> str:
        """Hash: every queue a registered definition sends tasks to -> "url" when a step gives its own url."""
        return "{%s:svc}:queues" % self.prefix

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

    def tasks(self, p: int, queue: str, priority: int = 0) -> str:
        """A queue's task stream; its priority lane ``...:p<n>`` for an instance of priority n > 0."""
        if priority > 0:
            return f"{self._tags[p]}:tasks:{queue}:p{priority}"
        return f"{self._tags[p]}:tasks:{queue}"

    def lanes(self, p: int) -> str:
        """Set: the partition's priority lanes (task streams ``...:p<n>``), written by append.lua."""
        return f"{self._tags[p]}:lanes"

    def lane_of(self, stream: str) -> tuple[str, int]:
        """(queue, priority) of a lane stream as listed in a lanes set; (queue, 0) for anything else
        of the shape ``{tag}:tasks:<queue>``. Only a lanes set says what is a lane: a queue name may end
        in ``:p<n>`` in a definition stored before that was refused (engine.core.ids.LANE_SUFFIX_RE)."""
        queue = stream.split(":tasks:", 1)[1]
        match = LANE_SUFFIX_RE.search(queue)
        if match is None:
            return queue, 0
        return queue[: match.start()], int(match[1])

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

    def sched(self, part: str) -> str:
        """Schedules (engine/store/schedules.py), all under the tag {<prefix>:sched}: part is
        names | due | claims, or s:<name> (definition and state), runs:<name>, req:<name>."""
        return "{%s:sched}:%s" % (self.prefix, part)
    @property
    def batches(self) -> str:
        """Sorted set: every batch id, scored by its creation ms (GET /batches pages it)."""
        return f"{self.prefix}:batches"

    @property
    def batches_active(self) -> str:
        """Set: the batches still matching or running, which `foldflow batches` runners take up."""
        return f"{self.prefix}:batches:active"

    def batch(self, batch_id: str, part: str) -> str:
        """One batch's keys (part: rec | items | seen | failures | lease), under one hash tag."""
        return "{%s:batch:%s}:%s" % (self.prefix, batch_id, part)
    def conc(self, digest: str, part: str) -> str:
        """One (workflow, concurrency key)'s admission keys under one hash tag (part: holders |
        queue | seq | evicted); ``digest`` is conc_digest(workflow, key)."""
        return "{%s:conc:%s}:%s" % (self.prefix, digest, part)

    @staticmethod
    def conc_digest(workflow: str, key: str) -> str:
        return hashlib.sha1(f"{workflow}\x00{key}".encode()).hexdigest()[:20]

    @property
    def conc_index(self) -> str:
        """Hash: conc digest -> {workflow, key, limit, at} of every key with slots (the reconciler walks it)."""
        return f"{self.prefix}:conc:index"
    @property
    def limit_configs(self) -> str:
        """Hash: service -> its limits (JSON); engine/store/limits.py."""
        return "{%s:limits}:config" % self.prefix

    @property
    def limit_version(self) -> str:
        """Counter bumped by every change of limit_configs: one GET tells a worker whether to re-read."""
        return "{%s:limits}:version" % self.prefix

    def limit_keys(self, service: str) -> list[str]:
        """A limited service's in-flight permits (zset), token bucket (hash), waiting tasks (hash): one tag."""
        tag = "{%s:limit:%s}" % (self.prefix, service)
        return [f"{tag}:inflight", f"{tag}:bucket", f"{tag}:waiting"]

