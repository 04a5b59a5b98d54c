"""Bodies of the per-service limit routes (`/services/{name}/limits`, `/limits`).
The schema states the bounds; engine/store/limits.py checks them again, naming the
field, for the CLI and for what a schema cannot say (a duration's unit and range)."""

from __future__ import annotations

from typing import Annotated

import msgspec

from engine.store.limits import MAX_IN_FLIGHT, MAX_RATE

Duration = Annotated[str, msgspec.Meta(max_length=32, description='a duration such as "1s", "1m", "1h", "1d"')]


class RateIn(msgspec.Struct, forbid_unknown_fields=True):
    """A token bucket: at most `limit` tasks started per `per`, refilled continuously (capacity `limit`)."""

    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_RATE)]
    per: Duration = "1s"


class LimitsIn(msgspec.Struct, forbid_unknown_fields=True):
    """A service's limits across the cluster; null (or absent) lifts that limit."""

    in_flight: Annotated[int, msgspec.Meta(ge=1, le=MAX_IN_FLIGHT, description="tasks running at once")] | None = None
    rate: RateIn | None = None
    lease: Annotated[Duration | None, msgspec.Meta(
        description="how long a permit outlives a worker that died holding it (1s to 1h, default 30s)")] = None


class RateView(msgspec.Struct):
    limit: int
    per: str
    per_ms: int


class UsageView(msgspec.Struct):
    in_flight: int  # permits held now
    tokens: float | None  # tokens in the bucket now (null without a rate)
    waiting: int  # tasks waiting for this service's limits
    waiting_in_flight: int  # ... for a permit
    waiting_rate: int  # ... for a token


class LimitsView(msgspec.Struct):
    service: str
    limited: bool
    in_flight: int | None
    rate: RateView | None
    lease: str
    lease_ms: int
    usage: UsageView


class LimitsPage(msgspec.Struct):
    items: list[LimitsView]
