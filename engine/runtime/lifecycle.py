"""Running a worker role: its flags, and serve() with signals, drain, the ops
server and the heartbeat around it. Every role (engine, router, activities,
projector) runs through serve()."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import time
from importlib import metadata
from typing import Any

from engine.config import LOG_FORMATS, Settings
from engine.store.connection import Redis
from engine.store.keys import Keys

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
    from engine.config import _ENV

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


async def serve(runner: Any, redis: Redis, settings: Settings) -> int:
    """Run a worker until SIGTERM/SIGINT; metrics, health and heartbeat around it.

    The first signal stops reading new work and lets in-flight work finish (at
    most FOLDFLOW_SHUTDOWN_TIMEOUT_MS); a second signal exits at once (130).
    Either way nothing is lost: what was not acknowledged is redelivered.
    Returns 0 after a clean drain, 1 when the drain limit cut it short.
    """
    from engine.runtime.health import OpsServer, Probe
    from engine.runtime.heartbeat import Heartbeat, describe
    from engine.runtime.metrics import make_registry
    from engine.runtime.observe import ActivityObserver, EngineObserver, catalog_step_types

    role = role_of(runner)
    keys = Keys(settings.prefix, settings.partitions)
    consumer = str(getattr(runner, "consumer", "") or settings.consumer_name())
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    run_task: asyncio.Task[Any] = asyncio.create_task(_run_after_setup(runner), name=f"{role}-run")
    probe = Probe(redis, keys, role, runner, stuck_after_ms=settings.stuck_after_ms,
                  alive=lambda: not run_task.done(), stopping=stopping.is_set)
    registry, metrics = make_registry(runner, role, consumer, version(), probe.snapshot)
    if hasattr(runner, "observer") and runner.observer is None:
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
