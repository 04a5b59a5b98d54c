"""One way to open Redis for every role: a single server, or Redis Cluster.

``redis://`` / ``rediss://`` (TLS) URLs open one server; ``redis+cluster://``
and ``rediss+cluster://`` open a cluster client seeded by that node, which
discovers the rest. Every multi-key script touches one hash tag, so the same
code runs on both; only reads over many partitions differ (see consumer.py).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.cluster import PRIMARY
from redis.exceptions import ClusterError, NoScriptError, TryAgainError

from engine.errors import ConfigError

# The client type every role is handed (a RedisCluster is typed as Redis: same commands).
Redis = aioredis.Redis

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


class _Cluster(RedisCluster):
    """redis-py's cluster client, made to ride out resharding (tests/faults/test_cluster_reshard.py).

    While a slot migrates, a script whose keys are split over two nodes is refused
    (TRYAGAIN), and redirects can bounce (redis-py sends ASKING and the redirected
    command on two pooled connections, which need not be the same one: the target
    then answers MOVED back to the source). redis-py retries 16 times and then raises
    ``ClusterError("TTL exhausted.")``, which is not one of the errors foldflow treats as
    "Redis not answering right now" (store.TRANSIENT): every worker loop logged it as a
    crash with a traceback and slept 1 s. It is raised here as TryAgainError instead,
    which callers already back off on and retry.

    ``reinitialize_steps=0`` (see connect): by default redis-py drops every connection of
    the client (``aclose``) on each 5th MOVED it sees, commands in flight on other tasks
    included; a burst of MOVED (every in-flight command of a slot that just moved) then
    broke those commands mid-write (under uvloop as a RuntimeError, "the handler is
    closed", which nothing treats as transient). A MOVED still updates that slot's owner
    (redis-py's move_slot), and connection errors still reload the whole topology.
    """

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().execute_command(*args, **kwargs)
        except ClusterError as exc:
            if "TTL exhausted" not in str(exc):
                raise
            raise TryAgainError(f"TRYAGAIN {args[0]!r}: redirects or TRYAGAIN did not settle within "
                                f"{self.RedisClusterRequestTTL} tries (a slot is migrating)") from exc

    def get_node(self, host: str | None = None, port: int | None = None,
                 node_name: str | None = None) -> ClusterNode | None:
        """An ASK redirect may name a master that serves no slot yet (a node just added, the
        target of a migration): it is not in redis-py's node cache, which is built from
        CLUSTER SLOTS, and redis-py then fails with AttributeError on None (redis-py issue
        #4015). Looked up by name (redis-py 5 to 7) or by host and port (redis-py 8), such a
        node is added as a primary, as redis-py already does for a MOVED to an unknown node."""
        node = super().get_node(host, port, node_name)
        if node is not None:
            return node
        if host and port:
            name_host, name_port = host, str(port)
        elif node_name and ":" in node_name:
            name_host, _, name_port = node_name.rpartition(":")
        else:
            return None
        if not name_port.isdigit():
            return None
        manager = self.nodes_manager
        node = ClusterNode(name_host, int(name_port), PRIMARY, **manager.connection_kwargs)
        manager.set_nodes(manager.nodes_cache, {node.name: node})
        return node


def connect(url: str, **kwargs: Any) -> aioredis.Redis:
    """A client for ``url``; a RedisCluster (typed as Redis: same commands) for cluster URLs.

    ConfigError (naming the option, never the URL: it may hold a password) when the URL's
    query string has an option the client does not take; redis-py would raise a TypeError
    later, from the first command, for a single server.
    """
    scheme, sep, rest = url.partition("://")
    try:
        if sep and scheme in CLUSTER_SCHEMES:
            kwargs.setdefault("reinitialize_steps", 0)  # why: _Cluster's docstring
            cluster = _Cluster.from_url(f"{CLUSTER_SCHEMES[scheme]}://{rest}", **kwargs)
            return cluster  # type: ignore[return-value]
        client = aioredis.Redis.from_url(url, **kwargs)
        # builds a connection object without connecting: the options are checked now
        client.connection_pool.make_connection()  # type: ignore[no-untyped-call]
        return client
    except TypeError as exc:
        m = re.search(r"keyword argument '([^']+)'", str(exc))
        option = m.group(1) if m else str(exc)
        kind = "a Redis Cluster" if sep and scheme in CLUSTER_SCHEMES else "a Redis"
        raise ConfigError(f"the Redis URL has an option {kind} client does not take: {option!r}") from None


def pool_size(concurrency: int) -> int:
    """Connections a worker's pool may open: each running activity may hold one for its breaker
    and one for its report at once, and redis-py's default pool of 100 refused them past a
    FOLDFLOW_CONCURRENCY of about 100 ("Too many connections": the worker stalled)."""
    return max(100, 2 * concurrency + 16)


def connect_blocking(url: str, max_connections: int, *, read_timeout_s: float, **kwargs: Any) -> aioredis.Redis:
    """A client whose pool waits for a free connection rather than failing past its size:
    the API's request client, and its client for blocking reads (XREAD BLOCK).

    Each blocked read holds its connection until it returns, so they get a pool of
    their own, sized to how many may block at once, and never take the connections
    other commands need. Over the size a command waits for a connection (up to 5 s,
    then ConnectionError, i.e. transient) instead of opening one more. The read
    timeout must outlast the longest BLOCK, so read_timeout_s wins over a
    `socket_timeout` in the URL (and over redis-py's default of 5 s). On Redis
    Cluster the size is per node.
    """
    scheme = url.partition("://")[0]
    if scheme in CLUSTER_SCHEMES:
        return connect(url, max_connections=max_connections, socket_timeout=read_timeout_s, **kwargs)
    kwargs.setdefault("timeout", 5)
    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=max_connections, **kwargs)
    pool.connection_kwargs["socket_timeout"] = read_timeout_s
    return aioredis.Redis(connection_pool=pool)


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
                # between the load and this call (tests/faults/test_misconfig.py hit it).
                results[i] = await redis.eval(source, len(keys), *keys, *args)
            except Exception as exc:
                results[i] = exc
    return results
