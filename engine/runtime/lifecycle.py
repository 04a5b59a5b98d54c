"""Running a worker role: its flags, and serve() with signals, drain, the ops
server and the heartbeat around it. Every role (engine, router, activities,
projector) runs through serve()."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterator
from importlib import metadata
from typing import Any

from engine.config import _ENV, LOG_FORMATS, Settings
from engine.runtime import tracing
from engine.runtime.role import Role
from engine.store.connection import Redis
from engine.store.keys import Keys

log = logging.getLogger("foldflow.lifecycle")

LOG_LEVEL_HELP = "DEBUG, INFO, WARNING, ... (FOLDFLOW_LOG_LEVEL; default INFO, WARNING for the demo)"

# One help line per setting flag; a setting missing here still gets a flag (see _help).
SETTING_FLAGS: dict[str, tuple[type, str]] = {
    "redis_url": (str, "the Redis (REDIS_URL / FOLDFLOW_REDIS_URL)"),
    "prefix": (str, "key prefix (FOLDFLOW_PREFIX, default ff)"),
    "partitions": (int, "partition count (FOLDFLOW_PARTITIONS, default 8)"),
    "consumer": (str, "this process's consumer name (FOLDFLOW_CONSUMER, default host-pid-random)"),
    "batch_size": (int, "entries read per batch (FOLDFLOW_BATCH_SIZE, default 256)"),
    "concurrency": (int, "handlers running at once (FOLDFLOW_CONCURRENCY, default 64)"),
    "block_ms": (int, "how long a read blocks (FOLDFLOW_BLOCK_MS)"),
    "claim_idle_ms": (int, "pending command idle time before redelivery (FOLDFLOW_CLAIM_IDLE_MS)"),
    "lease_ms": (int, "partition lease TTL (FOLDFLOW_LEASE_MS)"),
    "task_claim_idle_ms": (int, "pending task idle time before redelivery (FOLDFLOW_TASK_CLAIM_IDLE_MS)"),
    "max_deliveries": (int, "deliveries before dead-lettering (FOLDFLOW_MAX_DELIVERIES)"),
    "event_retention_ms": (int, "how long an external event can satisfy a later wait (FOLDFLOW_EVENT_RETENTION_MS)"),
    "wait_replicas": (int, "WAIT for this many replicas after each batch, 0: don't (FOLDFLOW_WAIT_REPLICAS)"),
    "wait_timeout_ms": (int, "how long that WAIT may take (FOLDFLOW_WAIT_TIMEOUT_MS)"),
    "require_fsync_always": (int, "1: refuse to run without appendfsync always (FOLDFLOW_REQUIRE_FSYNC_ALWAYS)"),
    "snapshot_every": (int, "events between state snapshots (FOLDFLOW_SNAPSHOT_EVERY)"),
    "history_warn_events": (int, "history length that gets a history_large event (FOLDFLOW_HISTORY_WARN_EVENTS)"),
    "retention_ms": (int, "finished instances are retired this long after, 0: never (FOLDFLOW_RETENTION_MS)"),
    "breaker_threshold": (int, "failures in a row that open a breaker, 0: off (FOLDFLOW_BREAKER_THRESHOLD)"),
    "breaker_cooldown_ms": (int, "how long an open breaker holds back (FOLDFLOW_BREAKER_COOLDOWN_MS)"),
    "cache_size": (int, "instance states cached per engine worker (FOLDFLOW_CACHE_SIZE)"),
    "timer_poll_ms": (int, "timer poll interval (FOLDFLOW_TIMER_POLL_MS)"),
    "schedule_poll_ms": (int, "how often due schedules are claimed (FOLDFLOW_SCHEDULE_POLL_MS)"),
    "max_payload_bytes": (int, "largest command data, result or event (FOLDFLOW_MAX_PAYLOAD_BYTES)"),
    "metrics_port": (int, "serve /metrics and /health/* on this port, 0: off (FOLDFLOW_METRICS_PORT)"),
    "metrics_host": (str, "address the metrics server binds (FOLDFLOW_METRICS_HOST, default 0.0.0.0)"),
    "log_format": (str, "text, json or kv (FOLDFLOW_LOG_FORMAT)"),
    "heartbeat_ms": (int, "worker heartbeat interval (FOLDFLOW_HEARTBEAT_MS)"),
    "shutdown_timeout_ms": (int, "SIGTERM drain limit (FOLDFLOW_SHUTDOWN_TIMEOUT_MS)"),
    "stuck_after_ms": (int, "no progress this long counts as stuck (FOLDFLOW_STUCK_AFTER_MS)"),
    "code_nodes": (str, "sandbox: definitions with code nodes may register, off: refused (FOLDFLOW_CODE_NODES)"),
}

# A role's own knobs: only after its verb, as `foldflow worker --batch-size 64`.
VERB_ONLY = frozenset({"batch_size", "consumer", "concurrency"})

# Which settings each verb reads, hence which flags `foldflow <verb> --help` lists.
CONNECTION = ("redis_url", "prefix", "partitions")
SENDS = CONNECTION + ("max_payload_bytes",)  # the client verbs that append a command or an event
_SERVED = ("consumer", "batch_size", "block_ms", "metrics_port", "metrics_host", "log_format", "heartbeat_ms",
           "shutdown_timeout_ms", "stuck_after_ms")  # what serve() and every consume loop read
_WRITES = ("max_deliveries", "max_payload_bytes", "wait_replicas", "wait_timeout_ms", "require_fsync_always")
VERB_SETTINGS: dict[str, tuple[str, ...]] = {
    # The engine worker runs the router, relay, timers and housekeeping in its process.
    "worker": CONNECTION + _SERVED + _WRITES + ("claim_idle_ms", "lease_ms", "cache_size", "timer_poll_ms",
                                                "schedule_poll_ms",
                                                "event_retention_ms", "snapshot_every", "history_warn_events",
                                                "retention_ms"),
    "activities": CONNECTION + _SERVED + _WRITES + ("task_claim_idle_ms", "concurrency", "breaker_threshold",
                                                    "breaker_cooldown_ms"),
    "projector": CONNECTION + _SERVED + ("claim_idle_ms",),
    "health": CONNECTION + ("metrics_port", "stuck_after_ms"),
    "api": SENDS + ("log_format", "stuck_after_ms", "code_nodes"),  # the API registers definitions
}


def version() -> str:
    try:
        return metadata.version("foldflow")
    except metadata.PackageNotFoundError:  # running from a checkout
        return "0+unknown"


def _help(field: str) -> str:
    if field in SETTING_FLAGS:
        return SETTING_FLAGS[field][1]
    return f"({_ENV.get(field, '')}, default {getattr(Settings(), field)!r})"


def _add_flag(parser: argparse.ArgumentParser, field: str, default: Any) -> None:
    flag = "--" + field.replace("_", "-")
    if field == "log_format":
        parser.add_argument(flag, choices=LOG_FORMATS, default=default, help=_help(field))
    else:
        kind = int if isinstance(getattr(Settings(), field), int) else str
        parser.add_argument(flag, type=kind, dest=field, default=default, help=_help(field))


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """Before the verb: a flag for every setting but a role's own knobs, including settings added later."""
    for field in Settings.__struct_fields__:
        if field not in VERB_ONLY:
            _add_flag(parser, field, os.environ.get("FOLDFLOW_LOG_FORMAT") if field == "log_format" else None)


def setting_flags(*fields: str, log_level: bool = False) -> argparse.ArgumentParser:
    """A parent parser (``parents=[...]``) taking these settings' flags after a verb.

    A sub-parser copies every attribute of its namespace over the top-level one, so
    a default here would undo the same flag given before the verb: the defaults are
    SUPPRESS, and a flag given in both places ends with the value after the verb.
    A role's own knobs have no flag before the verb, so they keep None.
    """
    parent = argparse.ArgumentParser(add_help=False)
    if log_level:
        parent.add_argument("--log-level", default=argparse.SUPPRESS, help=LOG_LEVEL_HELP)
    for field in fields:
        _add_flag(parent, field, None if field in VERB_ONLY else argparse.SUPPRESS)
    return parent


def setting_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in Settings.__struct_fields__ if getattr(args, k, None) is not None}


# -- lifecycle ----------------------------------------------------------------
async def serve(runner: Role, redis: Redis, settings: Settings) -> int:
    """Run a worker until SIGTERM/SIGINT; metrics, health and heartbeat around it.

    The first signal stops reading new work and lets in-flight work finish (at
    most FOLDFLOW_SHUTDOWN_TIMEOUT_MS); a second signal exits at once (130).
    Either way nothing is lost: what was not acknowledged is redelivered.
    Returns 0 after a clean drain, 1 when the drain limit cut it short.
    """
    from engine.runtime.health import OpsServer, Probe
    from engine.runtime.heartbeat import Heartbeat, describe
    from engine.runtime.metrics import make_registry

    role = runner.role
    tracing.setup(role)  # OTLP spans when OTEL_* asks for them (engine.runtime.tracing)
    keys = Keys(settings.prefix, settings.partitions)
    consumer = runner.consumer or settings.consumer_name()
    stopping = asyncio.Event()
    run_task: asyncio.Task[Any] = asyncio.create_task(_run_after_setup(runner), name=f"{role}-run")
    probe = Probe(redis, keys, role, runner, stuck_after_ms=settings.stuck_after_ms,
                  alive=lambda: not run_task.done(), stopping=stopping.is_set)
    registry, metrics = make_registry(runner, role, consumer, version(), probe.snapshot)
    runner.observed_by(metrics)
    start_wall = time.time_ns() // 1_000_000
    heartbeat = Heartbeat(redis, keys, settings.heartbeat_ms,
                          lambda: describe(runner, role, consumer, version(), start_wall), consumer)
    beat_task = asyncio.create_task(heartbeat.run(), name="heartbeat")
    server: OpsServer | None = None
    if settings.metrics_port:
        server = OpsServer(probe, registry, settings.metrics_host, settings.metrics_port)
        await server.start()
    extra = {"role": role, "consumer": consumer}
    try:
        with _signals_stop(runner, stopping, settings, extra):
            return await _drain(run_task, stopping, settings, extra)
    finally:
        await heartbeat.stop()
        beat_task.cancel()
        await asyncio.gather(beat_task, return_exceptions=True)
        if server is not None:
            await server.stop()
        await asyncio.to_thread(tracing.shutdown)  # flush the spans still batched


@contextlib.contextmanager
def _signals_stop(runner: Any, stopping: asyncio.Event, settings: Settings, extra: dict[str, str]) -> Iterator[None]:
    """SIGTERM/SIGINT stop the runner; a second one exits at once, leaving the rest to redelivery."""
    loop = asyncio.get_running_loop()

    def on_signal(signame: str) -> None:
        if stopping.is_set():
            log.warning("second %s: exiting now; unacknowledged work will be redelivered", signame)
            os._exit(130)
        stopping.set()
        log.info("%s: finishing in-flight work (at most %.1fs); a second signal exits at once", signame,
                 settings.shutdown_timeout_ms / 1000, extra=extra)
        runner.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig.name)
    try:
        yield
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _drain(run_task: asyncio.Task[Any], stopping: asyncio.Event, settings: Settings,
                 extra: dict[str, str]) -> int:
    """Wait for the run to end or a stop; then give in-flight work the drain limit. 1 when cut short."""
    stop_wait = asyncio.create_task(stopping.wait())
    await asyncio.wait({run_task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
    stop_wait.cancel()
    code = 0
    if not run_task.done():
        done, _ = await asyncio.wait({run_task}, timeout=settings.shutdown_timeout_ms / 1000)
        if not done:
            log.warning("in-flight work did not finish within %.1fs; leaving it to redelivery; still running: %s",
                        settings.shutdown_timeout_ms / 1000, still_running())
            run_task.cancel()
            await asyncio.gather(run_task, return_exceptions=True)
            code = 1
    if run_task.done() and not run_task.cancelled() and run_task.exception() is not None:
        raise run_task.exception()  # type: ignore[misc]
    if code == 0:
        log.info("stopped cleanly", extra=extra)
    return code


def still_running(limit: int = 12) -> str:
    """Each unfinished task with the innermost await it is suspended in: what a drain that ran out
    of time was waiting for (an operator, or a test's log, can then say which loop did not stop)."""
    out = []
    for task in sorted(asyncio.all_tasks(), key=lambda t: t.get_name()):
        if task.done() or task is asyncio.current_task():
            continue
        coro: Any = task.get_coro()
        chain = []
        while coro is not None and hasattr(coro, "cr_frame"):
            if coro.cr_frame is not None:
                code = coro.cr_frame.f_code
                chain.append(f"{code.co_filename.rsplit('/', 1)[-1]}:{coro.cr_frame.f_lineno} {code.co_name}")
            coro = getattr(coro, "cr_await", None)
        out.append(f"{task.get_name()} at {' > '.join(chain[-3:]) or '?'}")
    return "; ".join(out[:limit]) + (f"; and {len(out) - limit} more" if len(out) > limit else "")


async def _run_after_setup(runner: Any) -> Any:
    await asyncio.sleep(0)  # let serve() attach the observer before the first batch
    return await runner.run()
