"""Operator verbs (`foldflow health`, `foldflow top`, `foldflow stuck`), the flags
for every setting, and the lifecycle every worker role runs under: metrics and
health server, heartbeat, graceful SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import signal
import sys
import time
import urllib.error
import urllib.request
from importlib import metadata
from typing import Any

import orjson
import redis.asyncio as aioredis

from .connection import connect
from .config import LOG_FORMATS, Settings, from_env
from .errors import InvalidInput
from .keys import Keys

log = logging.getLogger("foldflow.lifecycle")

# Settings that have no flag elsewhere get a top-level one: `foldflow --block-ms 200 worker`.
# (--prefix and --partitions are top-level already; --batch-size, --consumer and
# --concurrency belong to the worker verbs.)
SETTING_FLAGS: dict[str, tuple[type, str]] = {
    "redis_url": (str, "the Redis (REDIS_URL / FOLDFLOW_REDIS_URL)"),
    "block_ms": (int, "how long a read blocks (FOLDFLOW_BLOCK_MS)"),
    "claim_idle_ms": (int, "pending command idle time before redelivery (FOLDFLOW_CLAIM_IDLE_MS)"),
    "lease_ms": (int, "partition lease TTL (FOLDFLOW_LEASE_MS)"),
    "task_claim_idle_ms": (int, "pending task idle time before redelivery (FOLDFLOW_TASK_CLAIM_IDLE_MS)"),
    "max_deliveries": (int, "deliveries before dead-lettering (FOLDFLOW_MAX_DELIVERIES)"),
    "cache_size": (int, "instance states cached per engine worker (FOLDFLOW_CACHE_SIZE)"),
    "timer_poll_ms": (int, "timer poll interval (FOLDFLOW_TIMER_POLL_MS)"),
    "max_payload_bytes": (int, "largest command data, result or event (FOLDFLOW_MAX_PAYLOAD_BYTES)"),
    "metrics_port": (int, "serve /metrics and /health/* on this port, 0: off (FOLDFLOW_METRICS_PORT)"),
    "metrics_host": (str, "address the metrics server binds (FOLDFLOW_METRICS_HOST, default 0.0.0.0)"),
    "log_format": (str, "text, json or kv (FOLDFLOW_LOG_FORMAT)"),
    "heartbeat_ms": (int, "worker heartbeat interval (FOLDFLOW_HEARTBEAT_MS)"),
    "shutdown_timeout_ms": (int, "SIGTERM drain limit (FOLDFLOW_SHUTDOWN_TIMEOUT_MS)"),
    "stuck_after_ms": (int, "no progress this long counts as stuck (FOLDFLOW_STUCK_AFTER_MS)"),
}


def version() -> str:
    try:
        return metadata.version("foldflow")
    except metadata.PackageNotFoundError:  # running from a checkout
        return "0+unknown"


OWN_FLAGS = frozenset({"prefix", "partitions", "batch_size", "consumer", "concurrency"})


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """A top-level flag for every setting without one elsewhere, including settings added later."""
    from .config import _ENV

    defaults = Settings()
    for field in Settings.__struct_fields__:
        if field in OWN_FLAGS:
            continue
        flag = "--" + field.replace("_", "-")
        var = "REDIS_URL" if field == "redis_url" else _ENV.get(field, "")
        help_ = SETTING_FLAGS.get(field, (str, f"({var}, default {getattr(defaults, field)!r})"))[1]
        if field == "log_format":
            parser.add_argument(flag, choices=LOG_FORMATS, default=os.environ.get("FOLDFLOW_LOG_FORMAT"), help=help_)
        else:
            kind = int if isinstance(getattr(defaults, field), int) else str
            parser.add_argument(flag, type=kind, dest=field, help=help_)


def setting_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in Settings.__struct_fields__ if getattr(args, k, None) is not None}


# -- lifecycle ----------------------------------------------------------------
def role_of(runner: Any) -> str:
    explicit = getattr(runner, "role", None)
    if isinstance(explicit, str):
        return explicit
    name = type(runner).__name__
    return {"EngineWorker": "engine", "ActivityWorker": "activities"}.get(name, name.lower().replace("worker", "") or "worker")


async def serve(runner: Any, redis: aioredis.Redis, settings: Settings) -> int:
    """Run a worker until SIGTERM/SIGINT; metrics, health and heartbeat around it.

    The first signal stops reading new work and lets in-flight work finish (at
    most FOLDFLOW_SHUTDOWN_TIMEOUT_MS); a second signal exits at once (130).
    Either way nothing is lost: what was not acknowledged is redelivered.
    Returns 0 after a clean drain, 1 when the drain limit cut it short.
    """
    from .health import OpsServer, Probe
    from .heartbeat import Heartbeat, describe
    from .metrics import make_registry
    from .observe import ActivityObserver, EngineObserver, catalog_step_types

    role = role_of(runner)
    keys = Keys(settings.prefix, settings.partitions)
    consumer = str(getattr(runner, "consumer", "") or settings.consumer_name())
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    run_task: asyncio.Task[Any] = asyncio.create_task(_run_after_setup(runner), name=f"{role}-run")
    probe = Probe(redis, keys, role, runner, stuck_after_ms=settings.stuck_after_ms,
                  alive=lambda: not run_task.done(), stopping=stopping.is_set)
    registry, metrics = make_registry(runner, role, consumer, version(), probe.snapshot)
    if hasattr(runner, "observer") and getattr(runner, "observer") is None:
        if role == "engine":
            runner.observer = EngineObserver(metrics, catalog_step_types(getattr(runner, "catalog", None)))
        elif role == "activities":
            runner.observer = ActivityObserver(metrics)
    start_wall = time.time_ns() // 1_000_000
    heartbeat = Heartbeat(redis, keys, settings.heartbeat_ms,
                          lambda: describe(runner, role, consumer, version(), start_wall), consumer)
    beat_task = asyncio.create_task(heartbeat.run(), name="heartbeat")
    server: OpsServer | None = None
    if settings.metrics_port:
        server = OpsServer(probe, registry, settings.metrics_host, settings.metrics_port)
        await server.start()

    def on_signal(signame: str) -> None:
        if stopping.is_set():
            log.warning("second %s: exiting now; unacknowledged work will be redelivered", signame)
            os._exit(130)
        stopping.set()
        log.info("%s: finishing in-flight work (at most %.1fs); a second signal exits at once", signame,
                 settings.shutdown_timeout_ms / 1000, extra={"role": role, "consumer": consumer})
        runner.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig.name)
    code = 0
    try:
        stop_wait = asyncio.create_task(stopping.wait())
        await asyncio.wait({run_task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        stop_wait.cancel()
        if not run_task.done():
            done, _ = await asyncio.wait({run_task}, timeout=settings.shutdown_timeout_ms / 1000)
            if not done:
                log.warning("in-flight work did not finish within %.1fs; leaving it to redelivery",
                            settings.shutdown_timeout_ms / 1000)
                run_task.cancel()
                await asyncio.gather(run_task, return_exceptions=True)
                code = 1
        if run_task.done() and not run_task.cancelled() and run_task.exception() is not None:
            raise run_task.exception()  # type: ignore[misc]
        if code == 0:
            log.info("stopped cleanly", extra={"role": role, "consumer": consumer})
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await heartbeat.stop()
        beat_task.cancel()
        await asyncio.gather(beat_task, return_exceptions=True)
        if server is not None:
            await server.stop()
    return code


async def _run_after_setup(runner: Any) -> Any:
    await asyncio.sleep(0)  # let serve() attach the observer before the first batch
    return await runner.run()


# -- verbs ----------------------------------------------------------------------
def _settings(args: argparse.Namespace) -> Settings:
    overrides = setting_overrides(args)
    for k in ("prefix", "partitions"):
        if getattr(args, k, None) is not None:
            overrides[k] = getattr(args, k)
    return from_env(**overrides)


async def cmd_health(args: argparse.Namespace) -> int:
    """Exec probe: ask the local worker's health endpoint, or check Redis directly."""
    settings = _settings(args)
    port = args.port or settings.metrics_port
    if port and not args.direct:
        url = f"http://{args.host}:{port}/health/{args.check}"
        try:
            with urllib.request.urlopen(url, timeout=args.timeout) as resp:  # noqa: S310 - loopback probe
                body = resp.read()
                code = resp.status
        except urllib.error.HTTPError as exc:
            body, code = exc.read(), exc.code
        except (urllib.error.URLError, OSError) as exc:
            print(orjson.dumps({"status": "fail", "error": f"{url}: {exc}"}).decode())
            return 1
        sys.stdout.write(body.decode(errors="replace"))
        return 0 if code == 200 else 1
    from .health import Probe

    redis = connect(settings.redis_url, socket_timeout=args.timeout, socket_connect_timeout=args.timeout)
    try:
        probe = Probe(redis, Keys(settings.prefix, settings.partitions), "cli", None,
                      stuck_after_ms=settings.stuck_after_ms, alive=lambda: True, stopping=lambda: False)
        ok, body = await (probe.dependencies() if args.check == "dependencies" else probe.readiness())
        if args.check == "readiness":
            body["checks"].pop("groups", None)  # a direct check has no worker, hence no groups of its own
            ok = all(v == "ok" for v in body["checks"].values())
            body["status"] = "ok" if ok else "fail"
        print(orjson.dumps(body).decode())
        return 0 if ok else 1
    finally:
        await redis.aclose()


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")


def parse_duration_ms(text: str) -> int:
    m = _DURATION.match(text)
    if not m:
        raise InvalidInput(f"--older-than {text!r}: expected a duration such as 90s, 10m, 2h")
    unit = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}[m.group(2) or "s"]
    return int(float(m.group(1)) * unit)


async def cmd_stuck(args: argparse.Namespace) -> int:
    from projections.keys import ViewKeys

    from .stuck import find_stuck

    older = parse_duration_ms(args.older_than)
    settings = _settings(args)
    keys = Keys(settings.prefix, settings.partitions)
    # The projector's status indexes name instances with nothing in flight (a paused one,
    # say); they are small for paused and created, and every running instance with --deep.
    statuses = ("paused", "created", "running") if args.deep else ("paused", "created")
    vk = ViewKeys(keys)
    listed = [vk.index(p, status=st) for p in range(keys.partitions) for st in statuses]
    redis = connect(settings.redis_url)
    try:
        found = await find_stuck(redis, keys, older, deep=args.deep, limit=args.limit, listed=listed)
    finally:
        await redis.aclose()
    if args.json:
        print(orjson.dumps([{f: getattr(s, f) for f in s.__struct_fields__} for s in found],
                           option=orjson.OPT_INDENT_2).decode())
        return 0
    if not found:
        print(f"no stuck instances (no progress for {args.older_than}{'' if args.deep else ', in-flight, paused and created only'})")
        return 0
    print(f"{len(found)} stuck instance(s), no progress for {args.older_than} or more:")
    for s in found:
        print(f"\n{s.instance_id}  {s.workflow}  {s.status}  idle {s.idle_s:.0f}s  partition {s.partition}"
              + (f"  correlation {s.correlation_id}" if s.correlation_id else ""))
        for reason in s.waits_for:
            print(f"  - {reason}")
    return 0


async def cmd_top(args: argparse.Namespace) -> int:
    from .top import run_top

    settings = _settings(args)
    return await run_top(settings, interval=args.interval, once=args.once, iterations=args.iterations)


def add_commands(sub: Any, parser: argparse.ArgumentParser | None = None) -> None:
    if parser is not None:
        add_setting_flags(parser)
    x = sub.add_parser("health", help="exec probe: exit 0 when the worker (or Redis) is healthy")
    x.add_argument("check", nargs="?", default="readiness", choices=("liveness", "readiness", "dependencies"))
    x.add_argument("--port", type=int, help="the worker's metrics port (default FOLDFLOW_METRICS_PORT)")
    x.add_argument("--host", default="127.0.0.1")
    x.add_argument("--direct", action="store_true", help="check Redis directly instead of a worker's endpoint")
    x.add_argument("--timeout", type=float, default=3.0, help="seconds")
    x.set_defaults(fn=cmd_health)

    x = sub.add_parser("stuck", help="instances without progress, with what each waits for")
    x.add_argument("--older-than", default="10m", help="no progress for this long (90s, 10m, 2h; default 10m)")
    x.add_argument("--deep", action="store_true", help="also every running instance the projections list, and "
                                                        "the partition feeds (slow; finds running instances with "
                                                        "nothing in flight)")
    x.add_argument("--limit", type=int, default=1000)
    x.add_argument("--json", action="store_true")
    x.set_defaults(fn=cmd_stuck)

    x = sub.add_parser("top", help="live terminal view: throughput, instances, lag, workers, slowest steps")
    x.add_argument("--interval", type=float, default=1.0, help="refresh every this many seconds")
    x.add_argument("--once", action="store_true", help="print one frame and exit")
    x.add_argument("--iterations", type=int, default=0, help="exit after this many frames (0: until q/Ctrl-C)")
    x.set_defaults(fn=cmd_top)
