"""The monitoring updates a run's events make, in seed 003's words."""

from __future__ import annotations

from engine.bridge.updates import run_status, updates
from engine.core.model import (
    Event,
    StepCompleted,
    StepError,
    StepFailed,
    StepScheduled,
    StepSkipped,
    WorkflowCancelled,
    WorkflowCompleted,
    WorkflowCreated,
    WorkflowFailed,
    WorkflowPaused,
    WorkflowRetried,
    WorkflowStarted,
)
from engine.core.runs import iso

CREATED = WorkflowCreated(instance_id="r", workflow="w", version="1")


def numbered(*events: Event) -> list[tuple[int, int, Event]]:
    return [(i, 1_700_000_000_000 + i, e) for i, e in enumerate(events, 1)]


def test_a_pipeline_says_pending_running_each_step_and_completed() -> None:
    messages, status = updates("r", "", numbered(
        CREATED, WorkflowStarted(),
        StepScheduled(step="a", attempt=1, task_id="t", queue="agent-a"),
        StepCompleted(step="a", attempt=1, output={"x": 1}),
        WorkflowCompleted(output={}),
    ))
    assert status == "COMPLETED"
    assert [(m["step_id"], m["status"]) for m in messages] == [
        (None, "PENDING"), (None, "RUNNING"), ("a", "RUNNING"), ("a", "COMPLETED"), (None, "COMPLETED")]
    running = messages[2]
    assert running["agent_name"] == "agent-a" and running["step_execution_id"] == "r:a:1"
    assert [m["update_id"] for m in messages] == [f"r:{n}" for n in range(1, 6)]
    assert messages[0]["timestamp"] == iso(1_700_000_000_001) == "2023-11-14T22:13:20.001Z"
    assert all(m["message_type"] == "status_update" for m in messages)


def test_a_failed_attempt_that_retries_says_so_and_a_failed_run_carries_its_error() -> None:
    error = StepError(message="boom", retryable=True)
    messages, status = updates("r", "RUNNING", numbered(
        StepFailed(step="a", attempt=1, error=error, retry_at=5),
        StepFailed(step="a", attempt=2, error=error),
        WorkflowFailed(step="a", error=error),
    ))
    assert status == "FAILED"
    assert [m["metadata"].get("will_retry") for m in messages[:2]] == [True, False]
    assert messages[2]["error_message"] == "boom" and messages[2]["status"] == "FAILED"


def test_only_changes_are_updates() -> None:
    assert run_status(WorkflowStarted(), "RUNNING") is None  # no change, no message
    assert run_status(WorkflowPaused(), "RUNNING") is None  # paused is still running to seed 003
    assert run_status(WorkflowRetried(steps=["a"]), "FAILED") == "RUNNING"
    assert run_status(WorkflowCancelled(reason="x"), "RUNNING") == "CANCELLED"
    messages, status = updates("r", "RUNNING", numbered(StepSkipped(step="b", attempt=0, reason="branch")))
    assert (messages, status) == ([], "RUNNING")
