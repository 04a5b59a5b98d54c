"""Prometheus metrics for every worker role, on an injected CollectorRegistry.

Three sources, so the hot paths carry at most one optional observer call:

- ``WorkflowMetrics``: workflow and step outcomes, durations, errors and
  retries, derived from the events an engine worker appends (the observer in
  ``engine.runtime.observe`` feeds it) and from the activity worker's handler runs;
- ``WorkerCollector``: the counters a worker already keeps (``EngineWorker.stats``,
  router, timers, cache; ``ActivityWorker.completed/failed/stale``), read at
  scrape time;
- ``RedisCollector``: what Redis knows (stream lag and pending per partition
  and group, dead letters, live workers, stuck instances, circuit breakers),
  from a snapshot refreshed (asynchronously) just before each scrape.

Labels are bounded: workflow names, step types, services (queues), partitions,
groups, roles, outcomes. Never an instance id. Counters are exposed with the
``_total`` suffix the exposition format requires (``workflow_execution_count``
is scraped as ``workflow_execution_count_total``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from engine.runtime.role import Role

WORKFLOW_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600, float("inf"))
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, float("inf"))


class WorkflowMetrics:
    """The metric families services dashboard, by workflow, step type and outcome."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.executions = Counter(
            "workflow_execution_count", "Workflow instances that reached a final status.",
            ["workflow", "status"], registry=registry)
        self.execution_seconds = Histogram(
            "workflow_execution_duration_seconds", "Created to final status, per instance.",
            ["workflow", "status"], buckets=WORKFLOW_BUCKETS, registry=registry)
        self.step_seconds = Histogram(
            "workflow_step_execution_duration_seconds",
            "A step from its first attempt's dispatch (or wait) to its final result.",
            ["workflow", "step_type", "status"], buckets=STEP_BUCKETS, registry=registry)
        self.workflow_errors = Counter(
            "workflow_error_rate", "Workflow failures (rate() it), by error kind.",
            ["workflow", "kind"], registry=registry)
        self.step_errors = Counter(
            "step_error_rate", "Failed step attempts (rate() it), by step type and error kind.",
            ["workflow", "step_type", "kind"], registry=registry)
        self.retries = Counter(
            "workflow_retry_count", "Step attempts scheduled again (retry policy, error handler or retry command).",
            ["workflow", "step_type"], registry=registry)
        self.transitions = Counter(
            "foldflow_workflow_events", "Events appended, by workflow and event type.",
            ["workflow", "event"], registry=registry)
        self.handler_seconds = Histogram(
            "foldflow_activity_handler_duration_seconds", "Activity handler run time, by service and outcome.",
            ["service", "outcome"], buckets=STEP_BUCKETS, registry=registry)
        self.tasks = Counter(
            "foldflow_activity_tasks", "Tasks an activity worker ran, by service and outcome.",
            ["service", "outcome"], registry=registry)
        self.http_overhead = Histogram(
            "foldflow_http_executor_overhead_seconds",
            "The HTTP executor's own time per call: task read to request sent (before), answer to result reported (after).",
            ["phase"], buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, float("inf")),
            registry=registry)
        self.limit_waiting = Gauge(  # issue 16: per-service limits (engine/workers/limits.py)
            "foldflow_limit_waiting_tasks", "Tasks of this worker waiting for a service limit now, by service and reason.",
            ["service", "reason"], registry=registry)
        self.limit_waits = Counter(
            "foldflow_limit_waits", "Tasks that had to wait for a service limit (in_flight or rate), by service and reason.",
            ["service", "reason"], registry=registry)


def _family(kind: str, name: str, doc: str, labels: list[str] | None = None) -> Any:
    cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
    return cls(name, doc, labels=labels or [])


# What a role's counters() mean: counter name -> (kind, metric name, help).
ENGINE_COUNTERS: tuple[tuple[str, str, str, str], ...] = (
    ("commands", "counter", "foldflow_engine_commands", "Inbox entries read."),
    ("events", "counter", "foldflow_engine_events", "Events appended."),
    ("ignored", "counter", "foldflow_engine_ignored_commands", "Commands that changed nothing (repeats, late results)."),
    ("conflicts", "counter", "foldflow_engine_append_conflicts", "Appends refused on version: decided again."),
    ("diverged", "counter", "foldflow_engine_diverged_histories",
     "Conflicts where the instance stream lost what a decision was made on (Redis lost writes): reloaded."),
    ("not_owner", "counter", "foldflow_engine_not_owner", "Entries reclaimed by another worker while held."),
    ("fenced", "counter", "foldflow_engine_fenced_appends", "Appends refused because the partition lease moved on."),
    ("dead_lettered", "counter", "foldflow_engine_dead_lettered", "Commands moved to a dead-letter stream."),
    ("reclaimed", "counter", "foldflow_engine_reclaimed", "Pending commands claimed from other consumers."),
    ("batches", "counter", "foldflow_engine_batches", "Batches decided."),
    ("cache_hits", "counter", "foldflow_engine_cache_hits", "Instance states found in the worker's cache."),
    ("cache_misses", "counter", "foldflow_engine_cache_misses", "Instance states loaded from Redis."),
    ("router_routed", "counter", "foldflow_router_commands", "Event commands the router sent to waiting instances."),
    ("router_dead_lettered", "counter", "foldflow_router_dead_lettered", "External events dead-lettered."),
    ("timers_fired", "counter", "foldflow_timers_fired", "Durable timers moved into the inboxes."),
    ("large_histories", "counter", "foldflow_engine_large_histories",
     "Instances whose history crossed FOLDFLOW_HISTORY_WARN_EVENTS."),
    ("retired", "counter", "foldflow_engine_retired_instances", "Finished instances whose streams were retired."),
    ("trimmed", "counter", "foldflow_engine_trimmed_entries", "Acknowledged inbox and old event entries trimmed."),
    ("catchups_swept", "counter", "foldflow_engine_catchups_swept",
     "Event-wait catch-ups a worker left unconfirmed (it died after its append), done by a sweep."),
    ("unavailable", "counter", "foldflow_engine_redis_unavailable",
     "Engine loop turns that met an unavailable Redis: the batch in hand was dropped (it stays pending) and retried."),
    ("relay_relayed", "counter", "foldflow_relay_commands", "Commands relayed from the outbox to other partitions."),
    ("reader_nogroup_recoveries", "counter", "foldflow_engine_nogroup_recoveries",
     "Consumer groups found missing (NOGROUP) and recreated: an alarm."),
    ("store_under_replicated", "counter", "foldflow_engine_under_replicated_batches",
     "Batches of writes fewer replicas than FOLDFLOW_WAIT_REPLICAS acknowledged in time."),
    ("schedules_started", "counter", "foldflow_schedule_starts", "Executions this worker started for schedules."),
    ("admission_admitted", "counter", "foldflow_admission_admitted",
     "Queued instances given a concurrency slot (an admit command sent)."),
    ("admission_evicted", "counter", "foldflow_admission_evicted",
     "Slot holders cancelled by a newer start (on_limit: cancel_oldest)."),
    ("admission_released", "counter", "foldflow_admission_released",
     "Slots the reconciler freed: their holder had ended or never started (a crash)."),
    ("admission_readmitted", "counter", "foldflow_admission_readmitted",
     "Admit commands the reconciler sent again (lost in a crash)."),
)
ACTIVITY_COUNTERS: tuple[tuple[str, str, str, str], ...] = (
    ("completed", "counter", "foldflow_activity_completed", "Task results reported as completed."),
    ("failed", "counter", "foldflow_activity_failed", "Task results reported as failed."),
    ("stale", "counter", "foldflow_activity_stale_results", "Late results dropped: the task was reclaimed."),
    ("breakers_opened", "counter", "foldflow_activity_breaker_opened", "Times this worker saw a circuit breaker open."),
    ("http_calls", "counter", "foldflow_http_calls", "HTTP service calls answered (any status), by the HTTP executor."),
    ("http_refused", "counter", "foldflow_http_refused_addresses",
     "Calls refused before sending: a link-local, metadata or denied address."),
    ("http_health_checks", "counter", "foldflow_http_health_checks", "Registry services health-checked by this worker."),
    ("http_registry_refreshes", "counter", "foldflow_http_registry_refreshes", "Times the registry's state was re-read."),
)

BRIDGE_COUNTERS: tuple[tuple[str, str, str, str], ...] = (
    ("requests", "counter", "foldflow_bridge_requests", "Execution and cancellation requests read (and reclaimed)."),
    ("runs_started", "counter", "foldflow_bridge_runs_started", "Execution requests carried out (a repeat counts again)."),
    ("cancellations", "counter", "foldflow_bridge_cancellations", "Cancellation requests sent to the engine."),
    ("requests_dead_lettered", "counter", "foldflow_bridge_dead_lettered",
     "Requests moved to the bridge's dead-letter stream."),
    ("bridge_reclaimed", "counter", "foldflow_bridge_reclaimed", "Pending entries claimed from dead bridges."),
    ("monitor_published", "counter", "foldflow_bridge_monitoring_updates", "Status updates published."),
    ("monitor_refused", "counter", "foldflow_bridge_monitor_refused",
     "Run blocks whose guard moved underneath (another bridge): folded again."),
)


class WorkerCollector(Collector):
    """Reads a worker's own counters at scrape time (no hook on its hot path)."""

    def __init__(self, runner: Role, role: str, consumer: str, version: str) -> None:
        self.runner = runner
        self.role = role
        self.consumer = consumer
        self.version = version
        self.started = time.time()

    def collect(self) -> Iterable[Metric]:
        info = _family("gauge", "foldflow_worker_info", "This worker's role and foldflow version (always 1).",
                       ["role", "version"])
        info.add_metric([self.role, self.version], 1)
        yield info
        up = _family("gauge", "foldflow_worker_start_time_seconds", "When this worker started (unix time).")
        up.add_metric([], self.started)
        yield up
        counters = self.runner.counters()
        for key, kind, name, doc in ENGINE_COUNTERS + ACTIVITY_COUNTERS + BRIDGE_COUNTERS:
            value = counters.get(key)
            if value is not None:
                fam = _family(kind, name, doc)
                fam.add_metric([], value)
                yield fam
        if "cache_hits" in counters:
            hits, total = counters["cache_hits"], counters["cache_hits"] + counters.get("cache_misses", 0)
            ratio = _family("gauge", "foldflow_engine_cache_hit_ratio", "Cache hits / lookups since start (0 when none).")
            ratio.add_metric([], hits / total if total else 0.0)
            yield ratio
            size = _family("gauge", "foldflow_engine_cache_instances", "Instance states in the cache now.")
            size.add_metric([], counters.get("cache_instances", 0))
            yield size
        if self.role == "engine":
            owned = _family("gauge", "foldflow_engine_partitions_owned", "Partitions this worker holds the lease of.")
            owned.add_metric([], len(self.runner.partitions()))
            yield owned
        running = self.runner.running()
        if running is not None:
            fam = _family("gauge", "foldflow_activity_tasks_running", "Handlers running now in this worker.")
            fam.add_metric([], running)
            yield fam


class RedisSnapshot:
    """Cluster gauges read from Redis; refreshed by the ops server before each scrape."""

    def __init__(self) -> None:
        self.up = 0
        self.refresh_seconds = 0.0
        # (group, partition, queue) -> (lag, pending); lag -1 when Redis cannot tell
        self.streams: dict[tuple[str, str, str], tuple[int, int]] = {}
        self.dead_letters: dict[str, int] = {}  # partition ("events" for ff:events:dlq) -> length
        self.workers: dict[str, int] = {}  # role -> live workers
        self.stuck: int | None = None
        self.breakers: dict[str, int] = {}  # service -> 0 closed, 1 half-open, 2 open


class RedisCollector(Collector):
    def __init__(self, snapshot: RedisSnapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        snap = self.snapshot
        up = _family("gauge", "foldflow_redis_up", "1 when the last refresh reached Redis.")
        up.add_metric([], snap.up)
        yield up
        took = _family("gauge", "foldflow_redis_refresh_duration_seconds", "How long reading the Redis gauges took.")
        took.add_metric([], snap.refresh_seconds)
        yield took
        labels = ["group", "partition", "queue"]
        lag = _family("gauge", "foldflow_stream_lag_entries",
                      "Entries not yet delivered to the group (-1: Redis cannot tell after a trim).", labels)
        pending = _family("gauge", "foldflow_stream_pending_entries", "Entries delivered but not acknowledged.", labels)
        for key, (n_lag, n_pending) in sorted(snap.streams.items()):
            lag.add_metric(list(key), n_lag)
            pending.add_metric(list(key), n_pending)
        yield lag
        yield pending
        dlq = _family("gauge", "foldflow_dead_letter_entries", "Entries in a dead-letter stream.", ["partition"])
        for p, n in sorted(snap.dead_letters.items()):
            dlq.add_metric([p], n)
        yield dlq
        workers = _family("gauge", "foldflow_workers_alive", "Workers with a live heartbeat, by role.", ["role"])
        for role, n in sorted(snap.workers.items()):
            workers.add_metric([role], n)
        yield workers
        if snap.stuck is not None:
            stuck = _family("gauge", "foldflow_stuck_instances",
                            "Instances of this worker's partitions without progress for FOLDFLOW_STUCK_AFTER_MS.")
            stuck.add_metric([], snap.stuck)
            yield stuck
        breaker = _family("gauge", "foldflow_circuit_breaker_state",
                          "Per service: 0 closed, 1 half-open, 2 open.", ["service"])
        for service, state in sorted(snap.breakers.items()):
            breaker.add_metric([service], state)
        yield breaker


def make_registry(runner: Role, role: str, consumer: str, version: str,
                  snapshot: RedisSnapshot) -> tuple[CollectorRegistry, WorkflowMetrics]:
    """A fresh registry for one worker: its counters, the Redis gauges, process metrics."""
    from prometheus_client import PROCESS_COLLECTOR, PlatformCollector, ProcessCollector

    registry = CollectorRegistry(auto_describe=True)
    if PROCESS_COLLECTOR is not None:
        ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    registry.register(WorkerCollector(runner, role, consumer, version))
    registry.register(RedisCollector(snapshot))
    return registry, WorkflowMetrics(registry)


Clock = Callable[[], float]
