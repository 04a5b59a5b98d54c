"""Observers: what the workers report about their work, outside their hot loops.

An engine worker calls ``EngineObserver.appended`` once per instance append that
succeeded, with the new events and the folded state; an activity worker calls
``ActivityObserver.task_done`` once per handler run. Each turns that into
metrics (``engine.runtime.metrics.WorkflowMetrics``) and structured log lines: one per
state transition at DEBUG, one per error at WARNING, each with the instance id,
correlation id, workflow, step and attempt.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from engine.core.model import (
    Event,
    State,
    StepCompleted,
    StepFailed,
    Task,
    WorkflowCancelled,
    WorkflowCompleted,
    WorkflowFailed,
    WorkflowRetried,
)
from engine.runtime.metrics import WorkflowMetrics
from engine.store.events import event_type

log = logging.getLogger("foldflow.transitions")
task_log = logging.getLogger("foldflow.tasks")

StepTypes = Callable[[str, str], dict[str, str]]
FINAL = {WorkflowCompleted: "completed", WorkflowFailed: "failed", WorkflowCancelled: "cancelled"}


def catalog_step_types(catalog: Any) -> StepTypes:
    """Step name -> step type for a cached definition (empty when not cached)."""
    memo: dict[tuple[str, str], dict[str, str]] = {}

    def lookup(workflow: str, version: str) -> dict[str, str]:
        found = memo.get((workflow, version))
        if found is None:
            definition = catalog.cached(workflow, version)
            if definition is None:
                return {}
            found = memo[(workflow, version)] = {
                str(getattr(s, "name", "")): str(getattr(s, "type", "unknown")) for s in getattr(definition, "steps", [])
            }
        return found

    return lookup


class _Children:
    """The labelled children of the metrics, each looked up once: prometheus_client's labels()
    checks the values and takes a lock on every call, 6% of an activity worker's samples in
    `python -m bench.profile`. Keyed by the metric object, which the observer keeps alive."""

    def __init__(self) -> None:
        self._memo: dict[tuple[int, tuple[str, ...]], Any] = {}

    def _child(self, metric: Any, *values: str) -> Any:
        key = (id(metric), values)
        child = self._memo.get(key)
        if child is None:
            child = self._memo[key] = metric.labels(*values)
        return child


class EngineObserver(_Children):
    def __init__(self, metrics: WorkflowMetrics | None, step_types: StepTypes | None = None) -> None:
        super().__init__()
        self.metrics = metrics
        self.step_types = step_types or (lambda w, v: {})

    def appended(self, instance_id: str, events: list[Event], state: State) -> None:
        if not events:
            return
        try:
            self._observe(instance_id, events, state)
        except Exception:
            log.exception("observer failed", extra={"instance_id": instance_id})

    def _observe(self, iid: str, events: list[Event], state: State) -> None:
        workflow = state.workflow or "unknown"
        types = self.step_types(workflow, state.def_version or "")
        debug = log.isEnabledFor(logging.DEBUG)
        for event in events:
            name = event_type(event)
            step = getattr(event, "step", None)
            ctx: dict[str, Any] = {"instance_id": iid, "correlation_id": state.correlation_id,
                                   "workflow": workflow, "event": name, "traceparent": state.traceparent}
            if step:
                ctx["step"] = step
                ctx["attempt"] = getattr(event, "attempt", None)
            step_type = types.get(step or "", "unknown")
            if not self._log_failure(event, ctx) and debug:
                log.debug("transition %s", name, extra=ctx)
            if self.metrics is not None:
                self._count(self.metrics, event, name, workflow, step_type, types, state)

    @staticmethod
    def _log_failure(event: Event, ctx: dict[str, Any]) -> bool:
        """One WARNING line per failure, with its kind; False when the event is no failure."""
        if isinstance(event, StepFailed):
            log.warning("step failed: %s", event.error.message,
                        extra={**ctx, "kind": event.error.kind or "unknown", "retry_at": event.retry_at})
            return True
        if isinstance(event, WorkflowFailed):
            log.warning("workflow failed: %s", event.error.message if event.error else "",
                        extra={**ctx, "kind": (event.error.kind if event.error else None) or "unknown"})
            return True
        return False

    def _count(self, m: WorkflowMetrics, event: Event, name: str, workflow: str, step_type: str,
               types: dict[str, str], state: State) -> None:
        self._child(m.transitions, workflow, name).inc()
        if isinstance(event, StepFailed):
            self._child(m.step_errors, workflow, step_type, event.error.kind or "unknown").inc()
            if event.retry_at is not None:
                self._child(m.retries, workflow, step_type).inc()
            else:
                self._step_done(workflow, step_type, state, event.step, "failed")
        elif isinstance(event, WorkflowFailed):
            self._child(m.workflow_errors, workflow, (event.error.kind if event.error else None) or "unknown").inc()
        elif isinstance(event, StepCompleted):
            self._step_done(workflow, step_type, state, event.step, "completed")
        elif isinstance(event, WorkflowRetried):
            for retried in event.steps:
                self._child(m.retries, workflow, types.get(retried, "unknown")).inc()
        status = FINAL.get(type(event))
        if status is not None:
            self._child(m.executions, workflow, status).inc()
            if state.created_ms is not None and state.finished_ms is not None:
                self._child(m.execution_seconds, workflow, status).observe(max(0, state.finished_ms - state.created_ms) / 1000)

    def _step_done(self, workflow: str, step_type: str, state: State, step: str, status: str) -> None:
        st = state.step(step)
        if self.metrics is not None and st.started_ms is not None and st.finished_ms is not None:
            self._child(self.metrics.step_seconds, workflow, step_type, status).observe(
                max(0, st.finished_ms - st.started_ms) / 1000)


class ActivityObserver(_Children):
    def __init__(self, metrics: WorkflowMetrics | None) -> None:
        super().__init__()
        self.metrics = metrics

    def task_done(self, task: Task, command: str, data: dict[str, Any], seconds: float) -> None:
        outcome = "completed" if command == "step.completed" else "failed"
        if self.metrics is not None:
            self._child(self.metrics.tasks, task.service, outcome).inc()
            self._child(self.metrics.handler_seconds, task.service, outcome).observe(seconds)
        ctx = {"instance_id": task.instance_id, "correlation_id": task.correlation_id, "workflow": task.workflow,
               "step": task.step, "attempt": task.attempt, "service": task.service, "seconds": round(seconds, 6),
               "traceparent": task.traceparent}  # the log line's trace_id (engine.ops.logs)
        if outcome == "failed":
            error = data.get("error") or {}
            task_log.warning("task failed: %s", error.get("message", ""), extra={**ctx, "kind": error.get("kind")})
        elif task_log.isEnabledFor(logging.DEBUG):
            task_log.debug("task completed", extra=ctx)
