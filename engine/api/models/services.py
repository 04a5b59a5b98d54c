"""Bodies of the service registry's routes (`/services`). The schema states the
record's rules so generated clients and fuzzers know them; the registry checks
them again, naming the field (engine/store/services.py), for the CLI and for
rules a schema cannot say (an absolute http(s) URL without query or credentials)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from engine.api.models.limits import LimitsView
from engine.store.services import MAX_CALL_TIMEOUT_MS, MAX_CHECK_TIMEOUT_MS, MAX_INTERVAL_MS, MAX_WEIGHT, MIN_INTERVAL_MS

Name = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9._-]{0,99}$",
                                   description="1-100 of a-z 0-9 . _ -, starting with a letter or digit")]
Url = Annotated[str, msgspec.Meta(min_length=8, max_length=2048, pattern=r"^https?://[^?#]+$",
                                  description="absolute http(s) base URL, no query or fragment")]
Duration = Annotated[str | int, msgspec.Meta(description='ms, or a string such as "500ms", "10s", "5m"')]
Text = Annotated[str, msgspec.Meta(max_length=1000)]
Tag = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
Path = Annotated[str, msgspec.Meta(max_length=1024)]
Status = Literal["passing", "critical", "unknown"]


class InstanceIn(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    url: Url
    weight: Annotated[int, msgspec.Meta(ge=1, le=MAX_WEIGHT)] = 1


class HealthIn(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """How instances are checked; `interval`/`timeout` take a duration, `*_ms` milliseconds (one of each)."""

    path: Path = "/health"
    interval: Duration | None = None
    interval_ms: Annotated[int, msgspec.Meta(ge=MIN_INTERVAL_MS, le=MAX_INTERVAL_MS)] | None = None
    timeout: Duration | None = None
    timeout_ms: Annotated[int, msgspec.Meta(ge=1, le=MAX_CHECK_TIMEOUT_MS)] | None = None
    failures_before_critical: Annotated[int, msgspec.Meta(ge=1, le=100)] = 3


class TlsIn(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Files on the machines of the processes that call the service (paths, not contents)."""

    ca_bundle: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None


class ServiceIn(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A service record: POST registers it, PUT replaces it (PUT may leave `name` out to keep it).
    Header values may name secrets (`{{ secrets.NAME }}`), resolved only when a call is made."""

    instances: Annotated[list[InstanceIn | Url], msgspec.Meta(min_length=1, max_length=100)]
    name: Name | None = None
    health: HealthIn | None = None
    timeout: Duration | None = None
    timeout_ms: Annotated[int, msgspec.Meta(ge=1, le=MAX_CALL_TIMEOUT_MS)] | None = None
    headers: Annotated[dict[str, Text], msgspec.Meta(max_length=50)] = {}
    tags: Annotated[list[Tag], msgspec.Meta(max_length=50)] = []
    metadata: Annotated[dict[str, Text], msgspec.Meta(max_length=50)] = {}
    tls: TlsIn | None = None


class InstanceView(msgspec.Struct):
    """An instance and its last check (`unknown`, `checked_at` null: never checked yet)."""

    url: str
    weight: int
    status: Status
    output: str
    checked_at: str | None
    consecutive_failures: int


class HealthView(msgspec.Struct):
    path: str
    interval_ms: int
    timeout_ms: int
    failures_before_critical: int


class TlsView(msgspec.Struct):
    ca_bundle: str | None
    client_cert: str | None
    client_key: str | None


class Service(msgspec.Struct):
    """A registered service; `status` sums up its instances' last checks."""

    id: str
    name: str
    status: Literal["passing", "warning", "critical", "unknown"]
    instances: list[InstanceView]
    health: HealthView
    timeout_ms: int | None
    headers: dict[str, str]
    tags: list[str]
    metadata: dict[str, str]
    tls: TlsView | None
    created_at: str | None
    updated_at: str | None
    limits: LimitsView | None = None  # its limits across the cluster, when set (GET /services/{id}; issue 16)


class ServicePage(msgspec.Struct):
    """Services by name; pass `next_cursor` as `cursor` for the next page (null: no more)."""

    items: list[Service]
    next_cursor: str | None = None


class CheckView(msgspec.Struct):
    url: str
    status: Status
    output: str
    checked_at: str | None


class ServiceHealth(msgspec.Struct):
    """A check run now of every instance (Consul's shape), and the service's status from them:
    passing (all), warning (some), critical (none passing), unknown (none checked)."""

    service_id: str
    name: str
    status: Literal["passing", "warning", "critical", "unknown"]
    checks: list[CheckView]
