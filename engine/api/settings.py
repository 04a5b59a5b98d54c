"""The HTTP service's own settings (the deployment's come from engine.config):
built once at the edge from the environment and flags, frozen, passed down."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping

import msgspec

from engine.errors import ConfigError

ALGORITHMS = ("HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512")


class ApiSettings(msgspec.Struct, frozen=True, kw_only=True):
    host: str = "127.0.0.1"
    """FOLDFLOW_API_HOST: the address `foldflow api` binds."""
    port: int = 8080
    """FOLDFLOW_API_PORT."""
    jwt_secret: str = ""
    """FOLDFLOW_JWT_SECRET or JWT_SECRET: the HMAC key of bearer tokens ("" with no JWKS URL: no auth)."""
    jwt_algorithm: str = "HS256"
    """FOLDFLOW_JWT_ALGORITHM or JWT_ALGORITHM."""
    jwks_url: str = ""
    """FOLDFLOW_JWT_JWKS_URL: an identity provider's JWKS, for RS256/ES256 tokens."""
    jwt_audience: str = ""
    """FOLDFLOW_JWT_AUDIENCE: when set, a token's `aud` must name it."""
    insecure_no_auth: bool = False
    """--insecure-no-auth: serve a non-loopback address with no auth configured."""
    max_subscriptions: int = 1000
    """FOLDFLOW_API_MAX_SUBSCRIPTIONS: live streams (SSE and WebSocket) one process serves at once."""
    subscription_buffer: int = 256
    """FOLDFLOW_API_SUBSCRIPTION_BUFFER: messages queued for one slow client before it is cut off."""
    heartbeat_s: float = 15.0
    """FOLDFLOW_API_HEARTBEAT_S: seconds between SSE comment heartbeats."""
    start_wait_ms: int = 2000
    """FOLDFLOW_API_START_WAIT_MS: default of POST /executions ?wait_ms=."""

    @property
    def auth_configured(self) -> bool:
        return bool(self.jwt_secret or self.jwks_url)


_ENV: dict[str, tuple[str, ...]] = {
    "host": ("FOLDFLOW_API_HOST",),
    "port": ("FOLDFLOW_API_PORT",),
    "jwt_secret": ("FOLDFLOW_JWT_SECRET", "JWT_SECRET"),
    "jwt_algorithm": ("FOLDFLOW_JWT_ALGORITHM", "JWT_ALGORITHM"),
    "jwks_url": ("FOLDFLOW_JWT_JWKS_URL",),
    "jwt_audience": ("FOLDFLOW_JWT_AUDIENCE",),
    "max_subscriptions": ("FOLDFLOW_API_MAX_SUBSCRIPTIONS",),
    "subscription_buffer": ("FOLDFLOW_API_SUBSCRIPTION_BUFFER",),
    "heartbeat_s": ("FOLDFLOW_API_HEARTBEAT_S",),
    "start_wait_ms": ("FOLDFLOW_API_START_WAIT_MS",),
}


def api_settings(env: Mapping[str, str] | None = None, **overrides: object) -> ApiSettings:
    """ApiSettings from the environment, then overrides (flags); every problem reported at once."""
    env = os.environ if env is None else env
    values: dict[str, object] = {}
    for field, names in _ENV.items():
        raw = next((env[n] for n in names if env.get(n)), None)
        if raw is not None:
            values[field] = raw
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        settings = msgspec.convert(values, ApiSettings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"API settings: {exc}") from None
    problems = _problems(settings)
    if problems:
        raise ConfigError("API settings:\n  " + "\n  ".join(problems))
    return settings


def _problems(s: ApiSettings) -> list[str]:
    problems = []
    if not 0 <= s.port <= 65535:
        problems.append(f"FOLDFLOW_API_PORT: {s.port} is not a port")
    if s.jwt_algorithm not in ALGORITHMS:
        problems.append(f"JWT_ALGORITHM: {s.jwt_algorithm!r} is not one of {', '.join(ALGORITHMS)}")
    if s.jwt_secret and not s.jwt_algorithm.startswith("HS") and not s.jwks_url:
        problems.append(f"JWT_ALGORITHM {s.jwt_algorithm} needs public keys: set FOLDFLOW_JWT_JWKS_URL")
    for field in ("max_subscriptions", "subscription_buffer", "heartbeat_s"):
        if getattr(s, field) <= 0:
            problems.append(f"{_ENV[field][0]}: must be positive")
    if s.start_wait_ms < 0:
        problems.append("FOLDFLOW_API_START_WAIT_MS: must be 0 or more")
    return problems


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind_refusal(s: ApiSettings) -> str | None:
    """Why `foldflow api` must not start with these settings, or None."""
    if s.auth_configured or s.insecure_no_auth or is_loopback(s.host):
        return None
    return (f"refusing to serve {s.host} with no auth: set FOLDFLOW_JWT_SECRET (or FOLDFLOW_JWT_JWKS_URL), "
            "bind a loopback address, or pass --insecure-no-auth")
