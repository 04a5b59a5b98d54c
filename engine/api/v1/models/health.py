"""Seed 001's health answers."""

from __future__ import annotations

from typing import Literal

import msgspec


class Health(msgspec.Struct, kw_only=True):
    status: Literal["healthy", "unhealthy"]
    redis: str
    """ok, or why it is not."""
    redis_latency_ms: float | None = None


class Pong(msgspec.Struct, kw_only=True):
    message: Literal["pong"] = "pong"
