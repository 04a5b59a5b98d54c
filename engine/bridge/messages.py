"""Seed 003's request messages as they arrive in a stream entry's ``data`` field:
read, checked, and either returned as a typed request or refused with the reason
it is dead-lettered with. Pure: no Redis, no clock."""

from __future__ import annotations

from typing import Any

import orjson

from engine.core.ids import INSTANCE_ID_RE
from engine.errors import PoisonMessage

EXECUTION_REQUEST = "execution_request"
CANCELLATION_REQUEST = "cancellation_request"
MAX_TEXT_CHARS = 200


class ExecutionRequest:
    __slots__ = ("input_data", "plan", "run_id", "timestamp", "triggered_by")

    def __init__(self, run_id: str, plan: dict[str, Any], input_data: dict[str, Any], timestamp: str | None,
                 triggered_by: str | None) -> None:
        self.run_id, self.plan, self.input_data = run_id, plan, input_data
        self.timestamp, self.triggered_by = timestamp, triggered_by


class CancellationRequest:
    __slots__ = ("cancelled_by", "reason", "run_id", "timestamp")

    def __init__(self, run_id: str, cancelled_by: str | None, reason: str | None, timestamp: str | None) -> None:
        self.run_id, self.cancelled_by, self.reason, self.timestamp = run_id, cancelled_by, reason, timestamp


def _document(fields: dict[bytes, bytes], expected: str) -> dict[str, Any]:
    raw = fields.get(b"data")
    if raw is None:
        raise PoisonMessage(f"entry has no 'data' field (the {expected} message JSON goes there)")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise PoisonMessage(f"'data' is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise PoisonMessage(f"'data' must be a JSON object, got {type(doc).__name__}")
    kind = doc.get("message_type")
    if kind != expected:
        raise PoisonMessage(f"message_type {kind!r}: this stream takes {expected!r}")
    return doc


def _run_id(doc: dict[str, Any]) -> str:
    run_id = doc.get("run_id")
    if not isinstance(run_id, str) or not run_id:
        raise PoisonMessage("missing run_id (a non-empty string)")
    if not INSTANCE_ID_RE.match(run_id):
        raise PoisonMessage(f"invalid run_id {run_id[:80]!r}: 1-200 characters of A-Z a-z 0-9 _ . : @ + -, "
                            "starting with a letter or digit")
    return run_id


def _text(doc: dict[str, Any], name: str) -> str | None:
    value = doc.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise PoisonMessage(f"{name} must be a string, got {type(value).__name__}")
    if len(value) > MAX_TEXT_CHARS and name != "reason":
        raise PoisonMessage(f"{name} is longer than {MAX_TEXT_CHARS} characters")
    return value[:2000]


def execution_request(fields: dict[bytes, bytes]) -> ExecutionRequest:
    doc = _document(fields, EXECUTION_REQUEST)
    run_id = _run_id(doc)
    plan = doc.get("workflow_plan")
    if not isinstance(plan, dict):
        raise PoisonMessage("workflow_plan must be a JSON object (the execution plan: start_step, steps)")
    input_data = doc.get("input_data", {})
    if input_data is None:
        input_data = {}
    if not isinstance(input_data, dict):
        raise PoisonMessage(f"input_data must be a JSON object, got {type(input_data).__name__}")
    return ExecutionRequest(run_id, plan, input_data, _text(doc, "timestamp"), _text(doc, "triggered_by"))


def cancellation_request(fields: dict[bytes, bytes]) -> CancellationRequest:
    doc = _document(fields, CANCELLATION_REQUEST)
    return CancellationRequest(_run_id(doc), _text(doc, "cancelled_by"), _text(doc, "reason"),
                               _text(doc, "timestamp"))
