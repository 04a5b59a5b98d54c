"""The feed's trim floor when a group's pending entries are acknowledged between the
XINFO GROUPS and the XPENDING that feed_floor reads (a projector acks all the time)."""

from __future__ import annotations

from typing import Any

from projections.catalog import PROJECTIONS
from projections.keys import group_name
from projections.trim import feed_floor
from tests.support.poll import run


class _Raced:
    """XINFO says one entry is pending; by the XPENDING it has been acknowledged."""

    async def xinfo_groups(self, feed: str) -> list[dict[str, Any]]:
        return [{"name": group_name(n), "last-delivered-id": b"5-0", "pending": 1} for n in PROJECTIONS]

    async def xpending(self, feed: str, group: str) -> dict[str, Any]:
        return {"pending": 0, "min": None, "max": None, "consumers": []}


def test_a_pending_entry_acknowledged_meanwhile_leaves_the_last_delivered_id_as_floor() -> None:
    assert run(feed_floor(_Raced(), "{ff:0}:feed")) == "5-0"  # type: ignore[arg-type]
