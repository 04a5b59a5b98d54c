"""The HTTP executor's settings, read once at the edge like engine.config.Settings."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping

import msgspec

from engine.errors import ConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class HttpSettings(msgspec.Struct, frozen=True, kw_only=True):
    timeout_ms: int = 30_000
    """FOLDFLOW_HTTP_TIMEOUT_MS: a call's whole time when neither the step nor the service sets one."""
    connect_timeout_ms: int = 5_000
    """FOLDFLOW_HTTP_CONNECT_TIMEOUT_MS: most time to open a connection (never more than the call's)."""
    max_per_host: int = 64
    """FOLDFLOW_HTTP_MAX_PER_HOST: open connections per host, kept alive between calls."""
    refresh_ms: int = 1_000
    """FOLDFLOW_HTTP_REFRESH_MS: how often the registry's version and instance health are re-read."""
    allow: tuple[str, ...] = ()
    """FOLDFLOW_HTTP_ALLOW: comma-separated CIDRs allowed even when denied (e.g. 169.254.0.0/16)."""
    deny: tuple[str, ...] = ()
    """FOLDFLOW_HTTP_DENY: comma-separated CIDRs refused in addition to link-local and metadata addresses."""
    secrets_dir: str | None = None
    """FOLDFLOW_SECRETS_DIR: a mounted directory with one file per secret (file name = secret name)."""

    def networks(self) -> tuple[list[Network], list[Network]]:
        return _networks(self.allow, "FOLDFLOW_HTTP_ALLOW"), _networks(self.deny, "FOLDFLOW_HTTP_DENY")


_INTS = {"timeout_ms": "FOLDFLOW_HTTP_TIMEOUT_MS", "connect_timeout_ms": "FOLDFLOW_HTTP_CONNECT_TIMEOUT_MS",
         "max_per_host": "FOLDFLOW_HTTP_MAX_PER_HOST", "refresh_ms": "FOLDFLOW_HTTP_REFRESH_MS"}


def http_settings(env: Mapping[str, str] | None = None) -> HttpSettings:
    env = os.environ if env is None else env
    values: dict[str, object] = {}
    for field, name in _INTS.items():
        raw = env.get(name)
        if raw is None or raw == "":
            continue
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
        if value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}")
        values[field] = value
    for field, name in (("allow", "FOLDFLOW_HTTP_ALLOW"), ("deny", "FOLDFLOW_HTTP_DENY")):
        raw = env.get(name, "")
        values[field] = tuple(part.strip() for part in raw.split(",") if part.strip())
    values["secrets_dir"] = env.get("FOLDFLOW_SECRETS_DIR") or None
    settings = HttpSettings(**values)  # type: ignore[arg-type]
    settings.networks()  # refuse a malformed CIDR at start, not at the first call
    return settings


def _networks(cidrs: tuple[str, ...], name: str) -> list[Network]:
    out = []
    for cidr in cidrs:
        try:
            out.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            raise ConfigError(f"{name}: {cidr!r} is not an address range (CIDR like 10.0.0.0/8)") from None
    return out
