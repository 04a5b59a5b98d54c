"""Executions as seed 001's jobs, without I/O: the five statuses, a job from a
folded state or from its read model, and the summary a listing shows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from engine.api.executions.views import at
from engine.api.v1.models.jobs import Job, JobStatus, JobSummary, NodeResult
from engine.api.workflow_ids import workflow_uuid
from engine.core.model import State, encode

# The engine's statuses in seed 001's words: a queued one (waiting for a concurrency slot) is
# pending, a paused or compensating execution is still under way, and a compensated one failed
# (its effects were undone).
JOB_STATUS: dict[str, JobStatus] = {
    "created": "pending", "queued": "pending", "running": "running", "paused": "running", "compensating": "running",
    "completed": "completed", "failed": "failed", "compensated": "failed", "cancelled": "cancelled",
}
NATIVE: dict[JobStatus, tuple[str, ...]] = {
    job: tuple(n for n, j in JOB_STATUS.items() if j == job)
    for job in ("pending", "running", "completed", "failed", "cancelled")}


def job_status(native: str) -> JobStatus:
    return JOB_STATUS.get(native, "pending")


def _builtins(value: Any) -> Any:
    return None if value is None else orjson.loads(encode(value))


def node_output(output: Any, unwrap: bool) -> Any:
    """A nodes-form step answers {"output": X, ...}: the node's output is X."""
    if unwrap and isinstance(output, dict) and "output" in output:
        return output["output"]
    return output


def job_from_state(state: State, names: Sequence[str], prefix: str, unwrap: bool) -> Job:
    results = []
    for name in list(names) + [n for n in state.steps if n not in names]:
        st = state.step(name)
        results.append(NodeResult(node_id=name, status=st.status, attempts=st.attempt,
                                  output=node_output(st.output, unwrap), error=_builtins(st.error)))
    return Job(job_id=state.id, run_id=state.id,
               workflow_id=workflow_uuid(prefix, state.workflow) if state.workflow else None,
               workflow_name=state.workflow, version=state.def_version, status=job_status(state.status),
               instance_status=state.status, input_data=dict(state.context), output=state.output,
               error=_builtins(state.error), node_results=results, created_at=at(state.created_ms),
               started_at=at(state.created_ms), updated_at=at(state.updated_ms), completed_at=at(state.finished_ms))


def _latest_attempts(attempts: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    latest: dict[str, dict[str, Any]] = {}
    for record in attempts:
        if record.get("kind") != "notification":
            latest[str(record["step"])] = record
    return latest


def job_from_record(record: dict[str, Any], attempts: list[dict[str, Any]], prefix: str, unwrap: bool) -> Job:
    """A job whose instance stream was retired, from its read models."""
    workflow = record.get("workflow")
    results = [NodeResult(node_id=name, status=str(r["status"]), attempts=int(r.get("attempt") or 0),
                          output=node_output(r.get("output"), unwrap), error=r.get("error"))
               for name, r in _latest_attempts(attempts).items()]
    return Job(job_id=record["id"], run_id=record["id"],
               workflow_id=workflow_uuid(prefix, workflow) if workflow else None, workflow_name=workflow,
               version=record.get("workflow_version"), status=job_status(str(record["status"])),
               instance_status=str(record["status"]), input_data=record.get("context") or {},
               output=record.get("output"), error=record.get("error"), node_results=results,
               created_at=at(record.get("created_ms")), started_at=at(record.get("started_ms")),
               updated_at=at(record.get("updated_ms")), completed_at=at(record.get("finished_ms")))


def job_summary(record: dict[str, Any], prefix: str) -> JobSummary:
    workflow = record.get("workflow")
    return JobSummary(job_id=record["id"], workflow_id=workflow_uuid(prefix, workflow) if workflow else None,
                      workflow_name=workflow, status=job_status(str(record["status"])),
                      instance_status=str(record["status"]), error=record.get("error"),
                      created_at=at(record.get("created_ms")), updated_at=at(record.get("updated_ms")),
                      completed_at=at(record.get("finished_ms")))
