"""One way to open Redis for every role: a single server, or Redis Cluster.

``redis://`` / ``rediss://`` (TLS) URLs open one server; ``redis+cluster://``
and ``rediss+cluster://`` open a cluster client seeded by that node, which
discovers the rest. Every multi-key script touches one hash tag, so the same
code runs on both; only reads over many partitions differ (see consumer.py).
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def connect(url: str, **kwargs: Any) -> aioredis.Redis:
    """A client for ``url``; a RedisCluster (typed as Redis: same commands) for cluster URLs."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme in CLUSTER_SCHEMES:
        cluster = RedisCluster.from_url(f"{CLUSTER_SCHEMES[scheme]}://{rest}", **kwargs)
        return cluster  # type: ignore[return-value]
    return aioredis.Redis.from_url(url, **kwargs)


def is_cluster(client: Any) -> bool:
    return isinstance(client, RedisCluster)
