"""Checks every worker role runs against its Redis before it reads anything.

A ``maxmemory-policy`` other than ``noeviction`` lets Redis evict streams and
consumer groups under memory pressure (redis/redis#6576): an evicted inbox or
instance stream is lost work and lost history, silently. A worker therefore
refuses to start on it. Where ``CONFIG`` is not allowed (an ACL user without
``+config``, managed Redis that renames it) the policy is read from ``INFO
memory`` instead; when neither answers the worker logs a warning and starts.
"""

from __future__ import annotations

import logging
from typing import Any

from engine.errors import ConfigError, StoreUnavailable
from engine.store.connection import Redis, is_cluster
from engine.store.errors import REFUSED, TRANSIENT
from engine.store.replies import text

log = logging.getLogger("foldflow.preflight")
SAFE_POLICY = "noeviction"


async def preflight(redis: Redis) -> None:
    """Refuse (ConfigError) a Redis that may evict keys; warn when it cannot be asked."""
    if type(redis).__module__.startswith("fakeredis"):
        return  # the in-process fake never evicts and knows neither CONFIG nor INFO
    try:
        policies = await _policies(redis)
    except TRANSIENT as exc:
        raise StoreUnavailable(f"redis unavailable checking maxmemory-policy: {exc}") from exc
    if policies is None:
        log.warning("could not read maxmemory-policy (CONFIG and INFO are not allowed for this user): make sure "
                    "it is %s, or Redis may evict streams and consumer groups", SAFE_POLICY)
        return
    bad = sorted({p for p in policies if p != SAFE_POLICY})
    if bad:
        raise ConfigError(
            f"Redis maxmemory-policy is {', '.join(bad)}: under memory pressure it would evict streams and "
            f"consumer groups (lost commands and histories). Set it to {SAFE_POLICY} "
            f"(redis.conf `maxmemory-policy {SAFE_POLICY}`, or CONFIG SET maxmemory-policy {SAFE_POLICY}; on "
            "managed Redis, its parameter group) and start again"
        )


async def _policies(redis: Redis) -> list[str] | None:
    """The policy of every node that holds data (each primary on Redis Cluster); None when not allowed."""
    target: dict[str, Any] = {"target_nodes": "primaries"} if is_cluster(redis) else {}
    try:
        reply = await redis.config_get("maxmemory-policy", **target)
        found = _collect(reply, "maxmemory-policy")
        if found:
            return found
    except REFUSED as exc:  # NOPERM, or CONFIG renamed away
        log.info("CONFIG GET maxmemory-policy refused (%s); reading INFO memory instead", exc)
    try:
        info = await redis.info("memory", **target)
    except REFUSED as exc:
        log.info("INFO memory refused: %s", exc)
        return None
    return _collect(info, "maxmemory_policy") or None


def _collect(reply: Any, field: str) -> list[str]:
    """Values of field in a reply, or in each node's reply (cluster: {node: reply})."""
    if not isinstance(reply, dict):
        return []
    for key in (field, field.encode()):
        if key in reply:
            value = reply[key]
            return [text(value)]
    out: list[str] = []
    for value in reply.values():
        if isinstance(value, dict):
            out += _collect(value, field)
    return out
