"""Operations without Redis: log formats, settings validation and their one
documented table, the `top` frame, the observer's metrics."""

from __future__ import annotations

import io
import logging
import re

import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from engine.config import _ENV, Settings, from_env
from engine.core.model import State, StepCompleted, StepError, StepFailed, StepState, WorkflowCompleted
from engine.errors import ConfigError, InvalidInput
from engine.ops.cli import build_parser
from engine.ops.logs import configure_logging
from engine.ops.top import TopModel, render
from engine.ops.verbs import parse_duration_ms
from engine.runtime.metrics import WorkflowMetrics
from engine.runtime.observe import EngineObserver
from tests.support.tools import ROOT


def _log_line(fmt: str) -> str:
    buf = io.StringIO()
    configure_logging("DEBUG", fmt, stream=buf)
    try:
        logging.getLogger("foldflow.test").warning(
            "step failed", extra={"instance_id": "i-1", "correlation_id": "c 1", "step": "s", "attempt": 2})
    finally:
        configure_logging("WARNING", "text")
    return buf.getvalue().strip()


def test_json_logs_carry_the_context() -> None:
    line = orjson.loads(_log_line("json"))
    assert line["level"] == "WARNING" and line["msg"] == "step failed"
    assert (line["instance_id"], line["correlation_id"], line["step"], line["attempt"]) == ("i-1", "c 1", "s", 2)


def test_kv_logs_quote_what_needs_quoting() -> None:
    line = _log_line("kv")
    assert 'msg="step failed" instance_id=i-1 correlation_id="c 1" step=s attempt=2' in line
    assert re.match(r"^ts=\S+ level=WARNING logger=foldflow.test ", line)


def test_every_setting_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        from_env({"FOLDFLOW_METRICS_PORT": "70000", "FOLDFLOW_LOG_FORMAT": "xml", "FOLDFLOW_HEARTBEAT_MS": "0",
                  "FOLDFLOW_BLOCK_MS": "x"})
    text = str(err.value)
    for var in ("FOLDFLOW_METRICS_PORT", "FOLDFLOW_LOG_FORMAT", "FOLDFLOW_HEARTBEAT_MS", "FOLDFLOW_BLOCK_MS"):
        assert var in text
    assert from_env({"FOLDFLOW_METRICS_PORT": "9100", "FOLDFLOW_LOG_FORMAT": "kv"}).metrics_port == 9100


def test_every_setting_has_an_env_var_a_flag_and_a_row_in_the_readme_table() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Configuration"):]
    table = table[: table.index("\n## ", 5)]
    help_text = build_parser().format_help()
    subcommand_flags = {"batch_size": "worker", "consumer": "worker", "concurrency": "activities"}
    for field in Settings.__struct_fields__:
        var = "REDIS_URL" if field == "redis_url" else _ENV[field]
        flag = "--" + field.replace("_", "-")
        assert f"`{var}`" in table, f"{var} missing from the README table"
        assert f"`{flag}`" in table, f"{flag} missing from the README table"
        where = subcommand_flags.get(field)
        sub_help = build_parser().parse_args([where, "--module", "m"] if where == "activities" else [where]) if where else None
        assert where or flag in help_text, f"{flag} is not a flag"
        assert sub_help is None or hasattr(sub_help, field)


def test_flags_override_the_environment_and_are_validated() -> None:
    from engine.ops.cli import _settings

    args = build_parser().parse_args(["--block-ms", "7", "--metrics-port", "9101", "--log-format", "json", "worker"])
    s = _settings(args)
    assert (s.block_ms, s.metrics_port, s.log_format) == (7, 9101, "json")
    with pytest.raises(ConfigError, match="FOLDFLOW_METRICS_PORT"):
        _settings(build_parser().parse_args(["--metrics-port", "-1", "worker"]))


def test_durations() -> None:
    assert [parse_duration_ms(t) for t in ("10m", "90s", "2h", "250ms", "5")] == [600_000, 90_000, 7_200_000, 250, 5000]
    with pytest.raises(InvalidInput):
        parse_duration_ms("soon")


def _feed(model: TopModel) -> None:
    for i in range(3):
        iid = f"i{i}"
        model.apply(iid, "workflow.created", 1000, {"workflow": "Orders"})
        model.apply(iid, "workflow.started", 1000, {})
        model.apply(iid, "workflow.step_scheduled", 1000, {"step": "charge", "attempt": 1})
    model.apply("i0", "workflow.step_completed", 3000, {"step": "charge", "attempt": 1})
    model.apply("i0", "workflow.completed", 3000, {})
    model.apply("i1", "workflow.step_completed", 1500, {"step": "charge", "attempt": 1})
    model.apply("i1", "workflow.step_waiting", 1500, {"step": "ship", "attempt": 1})
    model.apply("i2", "workflow.step_failed", 1200, {"step": "charge", "attempt": 1})
    model.apply("i2", "workflow.failed", 1200, {})


def test_top_frame_is_exactly_100x30_and_right() -> None:
    model = TopModel()
    _feed(model)
    assert model.per_workflow() == {"Orders": {"running": 0, "waiting": 1, "paused": 0, "failed": 1, "completed": 1,
                                               "cancelled": 0}}
    snap = {"prefix": "ff", "partitions": 8, "now": 0, "redis_up": True, "events_s": 12.5, "completed_s": 1.0,
            "commands_s": 3.0, "workflows": model.per_workflow(), "lag": {0: (5, 2)}, "router": (0, 0),
            "tasks": (1, 1), "dlq": 0, "workers": [], "slowest": model.slowest(5)}
    lines = render(snap, 100, 30)
    assert len(lines) == 30 and all(len(line) == 100 for line in lines)
    assert any(line.startswith("Orders") and line.split()[1:] == ["0", "1", "0", "1", "1", "0"] for line in lines)
    assert any("p0:5/2" in line for line in lines)
    slow = [line for line in lines if "Orders / charge" in line]
    assert slow and slow[0].split()[-3:] == ["3", "0.900", "2.000"]


def test_engine_observer_counts_outcomes_with_bounded_labels() -> None:
    registry = CollectorRegistry()
    obs = EngineObserver(WorkflowMetrics(registry), lambda w, v: {"charge": "service_call"})
    state = State(id="i-9", status="completed", workflow="Orders", def_version="1", created_ms=1000, finished_ms=4000,
                  steps={"charge": StepState(status="completed", started_ms=1000, finished_ms=2500)})
    failed = StepFailed(step="charge", attempt=1, error=StepError(message="x", kind="handler"), retry_at=5)
    obs.appended("i-9", [failed, StepCompleted(step="charge", attempt=2), WorkflowCompleted()], state)
    text = generate_latest(registry).decode()
    assert 'workflow_execution_count_total{status="completed",workflow="Orders"} 1.0' in text
    assert 'workflow_execution_duration_seconds_sum{status="completed",workflow="Orders"} 3.0' in text
    assert 'workflow_step_execution_duration_seconds_sum{status="completed",step_type="service_call",workflow="Orders"} 1.5' in text
    assert 'step_error_rate_total{kind="handler",step_type="service_call",workflow="Orders"} 1.0' in text
    assert 'workflow_retry_count_total{step_type="service_call",workflow="Orders"} 1.0' in text
    assert "i-9" not in text
