"""The Role protocol: everything serve(), the metrics, the health probe and the
heartbeat know of a worker. A role is named, has a consumer name, runs until
stopped, and says which (stream, group) pairs it reads, which partitions it
holds, which services it serves and which scripts it needs loaded.

Its counters() are what heartbeats, `foldflow top` and /metrics show; the metric
tables of engine.runtime.metrics say what each name means.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from engine.runtime.metrics import WorkflowMetrics


@runtime_checkable
class Role(Protocol):
    role: str
    consumer: str

    async def run(self) -> Any: ...

    def stop(self) -> None: ...

    def groups(self) -> list[tuple[str, str]]:
        """The (stream, consumer group) pairs this role reads: readiness checks each group exists."""
        ...

    def partitions(self) -> set[int]:
        """The partitions whose lease this role holds (empty for roles that hold none)."""
        ...

    def served_services(self) -> list[str]:
        """The services whose task queues this role serves (empty for roles that serve none)."""
        ...

    def scripts(self) -> Mapping[str, str]:
        """Script name -> SHA1 of the Lua scripts this role runs: readiness checks they are loaded."""
        ...

    def running(self) -> int | None:
        """Work items in flight now, for roles that run several at once; None otherwise."""
        ...

    def counters(self) -> dict[str, int]:
        """Counts since start, by name (engine.runtime.metrics names their metrics)."""
        ...

    def observed_by(self, metrics: WorkflowMetrics) -> None:
        """Report through these metrics (and the logs), unless an observer was given already."""
        ...


class Bystander:
    """A Role that runs nothing: what `foldflow health --direct` checks Redis as."""

    role = "cli"
    consumer = ""

    async def run(self) -> None:
        return None

    def stop(self) -> None:
        return None

    def groups(self) -> list[tuple[str, str]]:
        return []

    def partitions(self) -> set[int]:
        return set()

    def served_services(self) -> list[str]:
        return []

    def scripts(self) -> dict[str, str]:
        return {}

    def running(self) -> int | None:
        return None

    def counters(self) -> dict[str, int]:
        return {}

    def observed_by(self, metrics: WorkflowMetrics) -> None:
        return None
