"""Settings: one frozen Struct, built at the edge (env and flags) and passed down."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Mapping

import msgspec

from engine.errors import ConfigError


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    redis_url: str = "redis://127.0.0.1:6379/0"
    """FOLDFLOW_REDIS_URL or REDIS_URL: the Redis every role talks to."""
    prefix: str = "ff"
    """FOLDFLOW_PREFIX: first part of every key; one deployment per prefix."""
    partitions: int = 8
    """FOLDFLOW_PARTITIONS: fixed per deployment, recorded in <prefix>:meta."""
    consumer: str = ""
    """FOLDFLOW_CONSUMER: this worker's consumer name (default host-pid-random)."""
    batch_size: int = 256
    """FOLDFLOW_BATCH_SIZE: most inbox entries read per XREADGROUP."""
    block_ms: int = 1_000
    """FOLDFLOW_BLOCK_MS: how long XREADGROUP waits; kept below the socket timeout."""
    claim_idle_ms: int = 30_000
    """FOLDFLOW_CLAIM_IDLE_MS: a pending entry idle this long belongs to a dead worker."""
    lease_ms: int = 5_000
    """FOLDFLOW_LEASE_MS: a partition lease's TTL; a crashed worker's partitions move after it."""
    event_retention_ms: int = 86_400_000
    """FOLDFLOW_EVENT_RETENTION_MS: how long an external event can still satisfy a wait that begins later."""
    wait_replicas: int = 0
    """FOLDFLOW_WAIT_REPLICAS: after each batch of writes, WAIT for this many replicas (0: don't)."""
    wait_timeout_ms: int = 1_000
    """FOLDFLOW_WAIT_TIMEOUT_MS: how long that WAIT may take before the worker goes on (and warns)."""
    require_fsync_always: int = 0
    """FOLDFLOW_REQUIRE_FSYNC_ALWAYS: 1 refuses to start unless Redis runs appendonly yes, appendfsync always."""
    snapshot_every: int = 500
    """FOLDFLOW_SNAPSHOT_EVERY: events between snapshots of an instance's state (a cold load replays fewer)."""
    history_warn_events: int = 10_000
    """FOLDFLOW_HISTORY_WARN_EVENTS: a history crossing this length gets a workflow.history_large event."""
    retention_ms: int = 604_800_000
    """FOLDFLOW_RETENTION_MS: finished instances' streams are retired this long after they finish (0: never)."""
    breaker_threshold: int = 5
    """FOLDFLOW_BREAKER_THRESHOLD: consecutive failures that open a service's circuit breaker (0: off)."""
    breaker_cooldown_ms: int = 30_000
    """FOLDFLOW_BREAKER_COOLDOWN_MS: how long an open breaker holds attempts back before a trial."""
    task_claim_idle_ms: int = 300_000
    """FOLDFLOW_TASK_CLAIM_IDLE_MS: the same for tasks (a handler may run this long)."""
    max_deliveries: int = 5
    """FOLDFLOW_MAX_DELIVERIES: an entry delivered more often is dead-lettered."""
    cache_size: int = 10_000
    """FOLDFLOW_CACHE_SIZE: instance states kept in a worker's memory."""
    timer_poll_ms: int = 100
    """FOLDFLOW_TIMER_POLL_MS: how often due timers are moved to the inboxes."""
    schedule_poll_ms: int = 500
    """FOLDFLOW_SCHEDULE_POLL_MS: how often an engine worker claims due schedules (engine/workers/scheduler.py)."""
    max_payload_bytes: int = 1_048_576
    """FOLDFLOW_MAX_PAYLOAD_BYTES: largest command data, task result or event accepted."""
    concurrency: int = 64
    """FOLDFLOW_CONCURRENCY: activity handlers running at once in one process."""
    metrics_port: int = 0
    """FOLDFLOW_METRICS_PORT: serve /metrics and /health/* on this port (0: off)."""
    metrics_host: str = "0.0.0.0"
    """FOLDFLOW_METRICS_HOST: address the metrics and health server binds."""
    log_format: str = "text"
    """FOLDFLOW_LOG_FORMAT: text, json or kv (key=value)."""
    heartbeat_ms: int = 5_000
    """FOLDFLOW_HEARTBEAT_MS: how often a worker writes its heartbeat (it expires after 3x)."""
    shutdown_timeout_ms: int = 30_000
    """FOLDFLOW_SHUTDOWN_TIMEOUT_MS: how long SIGTERM waits for in-flight work before leaving it to redelivery."""
    stuck_after_ms: int = 600_000
    """FOLDFLOW_STUCK_AFTER_MS: an instance without progress this long counts as stuck (metric)."""
    code_nodes: str = "off"
    """FOLDFLOW_CODE_NODES: "sandbox" lets definitions with code nodes register (run them with
    `foldflow activities --code`); "off" refuses them."""

    def consumer_name(self) -> str:
        return self.consumer or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


_ENV = {
    "prefix": "FOLDFLOW_PREFIX",
    "partitions": "FOLDFLOW_PARTITIONS",
    "consumer": "FOLDFLOW_CONSUMER",
    "batch_size": "FOLDFLOW_BATCH_SIZE",
    "block_ms": "FOLDFLOW_BLOCK_MS",
    "claim_idle_ms": "FOLDFLOW_CLAIM_IDLE_MS",
    "task_claim_idle_ms": "FOLDFLOW_TASK_CLAIM_IDLE_MS",
    "lease_ms": "FOLDFLOW_LEASE_MS",
    "event_retention_ms": "FOLDFLOW_EVENT_RETENTION_MS",
    "breaker_threshold": "FOLDFLOW_BREAKER_THRESHOLD",
    "snapshot_every": "FOLDFLOW_SNAPSHOT_EVERY",
    "wait_replicas": "FOLDFLOW_WAIT_REPLICAS",
    "wait_timeout_ms": "FOLDFLOW_WAIT_TIMEOUT_MS",
    "require_fsync_always": "FOLDFLOW_REQUIRE_FSYNC_ALWAYS",
    "history_warn_events": "FOLDFLOW_HISTORY_WARN_EVENTS",
    "retention_ms": "FOLDFLOW_RETENTION_MS",
    "breaker_cooldown_ms": "FOLDFLOW_BREAKER_COOLDOWN_MS",
    "max_deliveries": "FOLDFLOW_MAX_DELIVERIES",
    "cache_size": "FOLDFLOW_CACHE_SIZE",
    "timer_poll_ms": "FOLDFLOW_TIMER_POLL_MS",
    "schedule_poll_ms": "FOLDFLOW_SCHEDULE_POLL_MS",
    "max_payload_bytes": "FOLDFLOW_MAX_PAYLOAD_BYTES",
    "concurrency": "FOLDFLOW_CONCURRENCY",
    "metrics_port": "FOLDFLOW_METRICS_PORT",
    "metrics_host": "FOLDFLOW_METRICS_HOST",
    "log_format": "FOLDFLOW_LOG_FORMAT",
    "heartbeat_ms": "FOLDFLOW_HEARTBEAT_MS",
    "shutdown_timeout_ms": "FOLDFLOW_SHUTDOWN_TIMEOUT_MS",
    "stuck_after_ms": "FOLDFLOW_STUCK_AFTER_MS",
    "code_nodes": "FOLDFLOW_CODE_NODES",
}
LOG_FORMATS = ("text", "json", "kv")
CODE_NODES = ("off", "sandbox")


def from_env(env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Settings from the environment, then overrides; every problem reported at once."""
    env = os.environ if env is None else env
    values: dict[str, object] = {}
    problems: list[str] = []
    url = env.get("FOLDFLOW_REDIS_URL") or env.get("REDIS_URL")
    if url:
        values["redis_url"] = url
    defaults = Settings()
    for field, var in _ENV.items():
        raw = env.get(var)
        if raw is None or raw == "":
            continue
        if isinstance(getattr(defaults, field), int):
            try:
                values[field] = int(raw)
            except ValueError:
                problems.append(f"{var}={raw!r}: expected an integer")
        else:
            values[field] = raw
    values.update({k: v for k, v in overrides.items() if v is not None})
    for field in ("partitions", "batch_size", "max_deliveries", "cache_size", "concurrency", "max_payload_bytes",
                  "lease_ms", "snapshot_every", "history_warn_events"):
        v = values.get(field, getattr(defaults, field))
        if not isinstance(v, int) or v < 1:
            problems.append(f"{_ENV[field]}: must be a positive integer, got {v!r}")
    for field in ("block_ms", "claim_idle_ms", "task_claim_idle_ms", "timer_poll_ms", "event_retention_ms",
                  "breaker_threshold", "breaker_cooldown_ms", "retention_ms", "wait_replicas",
                  "wait_timeout_ms", "require_fsync_always"):
        v = values.get(field, getattr(defaults, field))
        if not isinstance(v, int) or v < 0:
            problems.append(f"{_ENV[field]}: must be a non-negative integer, got {v!r}")
    prefix = values.get("prefix", defaults.prefix)
    if not isinstance(prefix, str) or not prefix or any(c in prefix for c in "{} \n"):
        problems.append(f"FOLDFLOW_PREFIX: must be non-empty without braces or spaces, got {prefix!r}")
    problems += _ops_problems(values, defaults)
    if problems:
        raise ConfigError("invalid settings:\n  " + "\n  ".join(problems))
    return msgspec.convert(values, Settings)


def _ops_problems(values: dict[str, object], defaults: Settings) -> list[str]:
    """Checks of the operations settings (metrics server, logs, heartbeats, shutdown)."""
    problems: list[str] = []
    port = values.get("metrics_port", defaults.metrics_port)
    if not isinstance(port, int) or not 0 <= port <= 65535:
        problems.append(f"FOLDFLOW_METRICS_PORT: must be 0 (off) or a TCP port 1-65535, got {port!r}")
    for field in ("heartbeat_ms", "shutdown_timeout_ms", "stuck_after_ms"):
        v = values.get(field, getattr(defaults, field))
        if not isinstance(v, int) or v < 1:
            problems.append(f"{_ENV[field]}: must be a positive integer, got {v!r}")
    fmt = values.get("log_format", defaults.log_format)
    if fmt not in LOG_FORMATS:
        problems.append(f"FOLDFLOW_LOG_FORMAT: must be one of {', '.join(LOG_FORMATS)}, got {fmt!r}")
    code_nodes = values.get("code_nodes", defaults.code_nodes)
    if code_nodes not in CODE_NODES:
        problems.append(f"FOLDFLOW_CODE_NODES: must be one of {', '.join(CODE_NODES)}, got {code_nodes!r}")
    host = values.get("metrics_host", defaults.metrics_host)
    if not isinstance(host, str) or not host or " " in host:
        problems.append(f"FOLDFLOW_METRICS_HOST: must be an address, got {host!r}")
    return problems
