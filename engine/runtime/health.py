"""The ops HTTP server of every worker role, on ``FOLDFLOW_METRICS_PORT``:

- ``GET /metrics``: Prometheus exposition (Redis gauges refreshed first);
- ``GET /health/liveness``: 200 while the worker's loop is alive;
- ``GET /health/readiness``: 200 when Redis answers, the scripts are loaded,
  the consumer groups exist and the worker is not shutting down; else 503;
- ``GET /health/dependencies``: Redis's reachability, latency, version and
  the persistence/eviction settings foldflow depends on; 503 when unreachable.

Health answers are JSON: ``{"status": "ok"|"fail", "checks": {...}}``. The server
is a few lines of asyncio, so a probe never waits behind a thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from engine.runtime.heartbeat import read_heartbeats
from engine.runtime.metrics import RedisSnapshot
from engine.runtime.role import Role
from engine.runtime.stuck import find_stuck
from engine.store.connection import Redis, is_cluster
from engine.store.inventory import add_lag, breaker_states, dead_letters, group_info
from engine.store.keys import ACTIVITY_GROUP, ENGINE_GROUP, ROUTER_GROUP, Keys
from engine.store.replies import text

log = logging.getLogger("foldflow.health")
CHECK_TIMEOUT_S = 2.0
STUCK_EVERY_S = 60.0



class Probe:
    """Health checks and the Redis gauges for one worker."""

    def __init__(self, redis: Redis, keys: Keys, role: str, runner: Role, *, stuck_after_ms: int,
                 alive: Callable[[], bool], stopping: Callable[[], bool]) -> None:
        self.redis = redis
        self.keys = keys
        self.role = role
        self.runner = runner
        self.stuck_after_ms = stuck_after_ms
        self.alive = alive
        self.stopping = stopping
        self.snapshot = RedisSnapshot()
        self._stuck_at = 0.0

    # -- health ------------------------------------------------------------------
    def liveness(self) -> tuple[bool, dict[str, Any]]:
        ok = self.alive()
        return ok, {"status": "ok" if ok else "fail", "role": self.role, "checks": {"loop": "ok" if ok else "stopped"}}

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        checks: dict[str, str] = {}
        try:
            await asyncio.wait_for(self.redis.ping(), CHECK_TIMEOUT_S)
            checks["redis"] = "ok"
            scripts = self.runner.scripts()
            if scripts:
                exists = await self.redis.script_exists(*scripts.values())
                missing = [n for n, ok in zip(scripts, exists) if not ok]
                checks["scripts"] = "ok" if not missing else f"not loaded: {', '.join(missing)}"
            pairs = self.runner.groups()
            missing_groups: list[str] = []
            by_group: dict[str, list[str]] = {}
            for stream, group in pairs:
                by_group.setdefault(group, []).append(stream)
            for group, streams in by_group.items():
                info = await group_info(self.redis, streams, group)
                missing_groups += [f"{s} ({group})" for s, i in info.items() if i is None]
            checks["groups"] = "ok" if not missing_groups else f"missing: {', '.join(missing_groups[:5])}"
        except Exception as exc:
            checks.setdefault("redis", f"unreachable: {exc.__class__.__name__}: {exc}")
        checks["lifecycle"] = "stopping" if self.stopping() else "ok"
        ok = all(v == "ok" for v in checks.values())
        return ok, {"status": "ok" if ok else "fail", "role": self.role, "checks": checks}

    async def dependencies(self) -> tuple[bool, dict[str, Any]]:
        started = time.perf_counter()
        try:
            await asyncio.wait_for(self.redis.ping(), CHECK_TIMEOUT_S)
            latency = (time.perf_counter() - started) * 1000
            cluster = is_cluster(self.redis)
            target: dict[str, Any] = {"target_nodes": "primaries"} if cluster else {}
            info = await asyncio.wait_for(self.redis.info(**target), CHECK_TIMEOUT_S)
            # A cluster answers per primary ({node: info}): each holds data, each can evict it.
            per_node = {str(n): i for n, i in info.items()} if cluster else {"": info}
            nodes = [{"node": name, "version": text(i.get("redis_version", "")),
                      "aof_enabled": bool(int(i.get("aof_enabled", 0))),
                      "maxmemory_policy": text(i.get("maxmemory_policy", ""))} for name, i in sorted(per_node.items())]
            versions = sorted({str(n["version"]) for n in nodes})
            policies = sorted({str(n["maxmemory_policy"]) for n in nodes})
            redis_dep: dict[str, Any] = {
                "status": "ok", "latency_ms": round(latency, 3), "version": ",".join(versions),
                "aof_enabled": all(n["aof_enabled"] for n in nodes), "maxmemory_policy": ",".join(policies),
            }
            if cluster:
                redis_dep["nodes"] = nodes
            evicting = [n for n in nodes if n["maxmemory_policy"] and n["maxmemory_policy"] != "noeviction"]
            if evicting:
                where = "" if not cluster else " on " + ", ".join(str(n["node"]) for n in evicting)
                redis_dep["warning"] = (f"maxmemory-policy {','.join(sorted({str(n['maxmemory_policy']) for n in evicting}))}"
                                        f"{where} can evict streams; use noeviction")
            ok = True
        except Exception as exc:
            redis_dep = {"status": "fail", "error": f"{exc.__class__.__name__}: {exc}"}
            ok = False
        return ok, {"status": "ok" if ok else "fail", "role": self.role, "dependencies": {"redis": redis_dep}}

    # -- gauges ------------------------------------------------------------------
    async def refresh(self) -> None:
        started = time.perf_counter()
        snap = self.snapshot
        try:
            await asyncio.wait_for(self._refresh(snap), CHECK_TIMEOUT_S * 2)
            snap.up = 1
        except Exception as exc:
            log.debug("metrics refresh failed: %s", exc)
            snap.up = 0
        snap.refresh_seconds = time.perf_counter() - started

    async def _refresh(self, snap: RedisSnapshot) -> None:
        streams: dict[tuple[str, str, str], tuple[int, int]] = {}
        if self.role == "engine":
            owned = sorted(self.runner.partitions())
            inboxes = [self.keys.inbox(p) for p in owned]
            for stream, gi in (await group_info(self.redis, inboxes, ENGINE_GROUP)).items():
                if gi is not None:
                    streams[(ENGINE_GROUP, str(self.keys.stream_partition(stream)), "")] = (gi.lag, gi.pending)
            ev = (await group_info(self.redis, [self.keys.events], ROUTER_GROUP)).get(self.keys.events)
            if ev is not None:
                streams[(ROUTER_GROUP, "", "")] = (ev.lag, ev.pending)
            snap.dead_letters = await dead_letters(self.redis, self.keys, owned)
            if time.monotonic() - self._stuck_at > STUCK_EVERY_S and owned:
                self._stuck_at = time.monotonic()
                snap.stuck = len(await find_stuck(self.redis, self.keys, self.stuck_after_ms, partitions=owned))
            elif not owned:
                snap.stuck = 0
        elif self.role == "activities":
            task_keys = [s for s, g in self.runner.groups() if g == ACTIVITY_GROUP]
            served = set(self.runner.served_services())
            for stream, gi in (await group_info(self.redis, task_keys, ACTIVITY_GROUP)).items():
                if gi is not None:  # a priority lane (engine.workers.lanes) counts with its queue
                    queue = stream.split(":tasks:", 1)[1]
                    queue = queue if queue in served else self.keys.lane_of(stream)[0]
                    add_lag(streams, (ACTIVITY_GROUP, str(self.keys.stream_partition(stream)), queue), gi.lag, gi.pending)
            snap.breakers = await breaker_states(self.redis, self.keys, self.runner.served_services())
        snap.streams = streams
        roles: dict[str, int] = {}
        for hb in await read_heartbeats(self.redis, self.keys):
            roles[hb["role"]] = roles.get(hb["role"], 0) + 1
        snap.workers = roles


class OpsServer:
    """GET /metrics and /health/*; anything else is 404."""

    def __init__(self, probe: Probe, registry: CollectorRegistry, host: str, port: int) -> None:
        self.probe = probe
        self.registry = registry
        self.host = host
        self.port = port
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        sock = self._server.sockets[0].getsockname()
        self.port = int(sock[1])
        log.info("metrics and health on http://%s:%d/metrics", self.host, self.port, extra={"role": self.probe.role})

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            method, _, rest = request.decode("latin-1").partition(" ")
            path = rest.split(" ", 1)[0].split("?", 1)[0]
            status, ctype, body = await self.route(method, path)
            head = (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\n\r\n")
            writer.write(head.encode() + (body if method != "HEAD" else b""))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    async def route(self, method: str, path: str) -> tuple[str, str, bytes]:
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", b"GET only\n"
        if path == "/metrics":
            await self.probe.refresh()
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest(self.registry)
        checks: dict[str, Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]] = {
            "/health/readiness": self.probe.readiness, "/health/dependencies": self.probe.dependencies,
        }
        if path == "/health/liveness":
            ok, body = self.probe.liveness()
        elif path in checks:
            ok, body = await checks[path]()
        else:
            return "404 Not Found", "text/plain", b"not found: /metrics, /health/liveness, /health/readiness, /health/dependencies\n"
        return ("200 OK" if ok else "503 Service Unavailable"), "application/json", orjson.dumps(body) + b"\n"
