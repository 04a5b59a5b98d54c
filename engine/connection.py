"""One way to open Redis for every role: a single server, or Redis Cluster.

``redis://`` / ``rediss://`` (TLS) URLs open one server; ``redis+cluster://``
and ``rediss+cluster://`` open a cluster client seeded by that node, which
discovers the rest. Every multi-key script touches one hash tag, so the same
code runs on both; only reads over many partitions differ (see consumer.py).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, Callable, Sequence

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

from .errors import ConfigError

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def connect(url: str, **kwargs: Any) -> aioredis.Redis:
    """A client for ``url``; a RedisCluster (typed as Redis: same commands) for cluster URLs.

    ConfigError (naming the option, never the URL: it may hold a password) when the URL's
    query string has an option the client does not take; redis-py would raise a TypeError
    later, from the first command, for a single server.
    """
    scheme, sep, rest = url.partition("://")
    try:
        if sep and scheme in CLUSTER_SCHEMES:
            cluster = RedisCluster.from_url(f"{CLUSTER_SCHEMES[scheme]}://{rest}", **kwargs)
            return cluster  # type: ignore[return-value]
        client = aioredis.Redis.from_url(url, **kwargs)
        client.connection_pool.make_connection()  # builds, does not connect: checks the options now
        return client
    except TypeError as exc:
        m = re.search(r"keyword argument '([^']+)'", str(exc))
        option = m.group(1) if m else str(exc)
        kind = "a Redis Cluster" if sep and scheme in CLUSTER_SCHEMES else "a Redis"
        raise ConfigError(f"the Redis URL has an option {kind} client does not take: {option!r}") from None


def is_cluster(client: Any) -> bool:
    return isinstance(client, RedisCluster)


async def evalsha_many(redis: Any, sha: str, source: bytes | str,
                       calls: Sequence[tuple[Sequence[Any], Sequence[Any]]],
                       wait: tuple[int, int, Callable[[int], None]] | None = None) -> list[Any]:
    """Run one script for many (keys, args), one round trip where the client allows.

    A single server gets a pipeline; redis-py refuses EVALSHA in a cluster
    pipeline, so on Redis Cluster the calls go out concurrently instead. A
    NOSCRIPT answer (restart, failover, SCRIPT FLUSH) loads the script (on
    every primary, for a cluster) and runs that call again. Replies come back in
    order; a call that failed is returned as its exception.

    ``wait`` = (replicas, timeout ms, report): a WAIT on the same connection
    after the calls (a single server only: WAIT covers the writes made on its
    own connection), and how many replicas acknowledged them goes to report.
    """
    if is_cluster(redis):
        results: list[Any] = list(await asyncio.gather(
            *(redis.evalsha(sha, len(keys), *keys, *args) for keys, args in calls), return_exceptions=True))
    else:
        pipe = redis.pipeline(transaction=False)
        for keys, args in calls:
            pipe.evalsha(sha, len(keys), *keys, *args)
        if wait is not None:
            pipe.execute_command("WAIT", wait[0], wait[1])
        results = await pipe.execute(raise_on_error=False)
        if wait is not None:
            acked = results.pop()
            wait[2](acked if isinstance(acked, int) else 0)
    missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
    if missing:
        await redis.script_load(source)
        for i in missing:
            keys, args = calls[i]
            try:
                # EVAL with the source, not EVALSHA: another SCRIPT FLUSH may land
                # between the load and this call (tests/test_misconfig.py hit it).
                results[i] = await redis.eval(source, len(keys), *keys, *args)
            except Exception as exc:  # noqa: BLE001 - returned like the others
                results[i] = exc
    return results
