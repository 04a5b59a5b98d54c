"""Read-model key names, in one place (streams.md, "Read models", says it for people).

Everything a projection writes for one instance lives in that instance's
partition, under the partition's hash tag ``{<prefix>:<p>}``: the view, its
version guard, the listing-index entries and the partition's checkpoint, so one
script call updates them together and runs unchanged on Redis Cluster. Listing
and correlation indexes are therefore per-partition sorted sets, merged at query
time (P is small). External events (``<prefix>:events``) are indexed under the
tag ``{<prefix>:events}``, the slot of that stream, so their index entry and
their acknowledgement are one script call too.
"""

from __future__ import annotations

from engine.store.keys import Keys

GROUP_PREFIX = "proj:"

STATUSES = ("created", "queued", "running", "paused", "failed", "completed", "cancelled", "compensating", "compensated")


def group_name(projection: str) -> str:
    return GROUP_PREFIX + projection


class ViewKeys:
    """Key names of the read models of one deployment (a prefix and a partition count)."""

    __slots__ = ("_events_tag", "keys", "partitions", "prefix")

    def __init__(self, keys: Keys) -> None:
        self.keys = keys
        self.prefix = keys.prefix
        self.partitions = keys.partitions
        # "{ff:events}:..." hashes like "ff:events": the external events stream's slot.
        self._events_tag = "{%s}" % keys.events

    # -- per instance ---------------------------------------------------------
    def view(self, p: int, instance_id: str) -> str:
        """Hash: per projection NAME its view (field NAME) and projected version (field v:NAME)."""
        return f"{self.keys.tag(p)}:x:i:{instance_id}"

    def lifecycle(self, p: int, instance_id: str) -> str:
        """List: the instance's lifecycle events, in version order."""
        return f"{self.keys.tag(p)}:x:l:{instance_id}"

    # -- per partition ----------------------------------------------------------
    def checkpoint(self, p: int) -> str:
        """Hash: projection name -> highest feed entry id it has applied in this partition."""
        return f"{self.keys.tag(p)}:x:ckpt"

    def index(self, p: int, status: str | None = None, workflow: str | None = None) -> str:
        """Sorted set of instance ids, score = created ms, for one combination of filters."""
        tag = self.keys.tag(p)
        if status is None and workflow is None:
            return f"{tag}:x:ix:all"
        if workflow is None:
            return f"{tag}:x:ix:st:{status}"
        if status is None:
            return f"{tag}:x:ix:wf:{workflow}"
        return f"{tag}:x:ix:ws:{status}:{workflow}"

    def correlation(self, p: int, correlation_id: str) -> str:
        """Sorted set of the partition's instance ids under a correlation id, score = created ms."""
        return f"{self.keys.tag(p)}:x:c:{correlation_id}"

    # -- external events (slot of <prefix>:events) ------------------------------
    def correlation_events(self, correlation_id: str) -> str:
        """Sorted set of external events that carried a correlation id: score = entry ms, member = JSON."""
        return f"{self._events_tag}:x:c:{correlation_id}"

    @property
    def events_checkpoint(self) -> str:
        return f"{self._events_tag}:x:ckpt"

    def feeds(self) -> list[str]:
        return [self.keys.feed(p) for p in range(self.partitions)]
