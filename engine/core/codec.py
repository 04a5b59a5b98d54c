"""Entries on the wire <-> typed messages. Anything malformed becomes a
PoisonMessage whose text names the problem; the worker dead-letters it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
import orjson

from engine.core.ids import INSTANCE_ID_RE, traceparent_problem
from engine.core.model import COMMAND_TYPES, Envelope, Task, decode_command, decode_task_data
from engine.errors import EngineError, PoisonMessage


def _field(fields: Mapping[bytes, bytes], name: bytes) -> bytes:
    value = fields.get(name)
    if value is None:
        raise PoisonMessage(f"missing field {name.decode()!r}")
    return value


def _text(fields: Mapping[bytes, bytes], name: bytes) -> str:
    try:
        return _field(fields, name).decode()
    except UnicodeDecodeError:
        raise PoisonMessage(f"field {name.decode()!r} is not UTF-8") from None


# Bounded lengths of the text fields a sender controls besides the data (streams.md,
# "Security"): they end up in key names, indexes, logs and dead letters. cmd_id is
# longer: the ids foldflow makes itself hold an instance id (200) and a step name
# (100), e.g. res:<instance id>:<step>:<attempt>.
MAX_TYPE_CHARS = 200
MAX_CORRELATION_ID_CHARS = 200
MAX_CMD_ID_CHARS = 512


def check_length(field: str, value: str, limit: int, error: type[EngineError] = PoisonMessage) -> None:
    """The one per-field length check (streams.md, "Security"): raises ``error`` naming the
    field and the limit. Workers dead-letter (PoisonMessage); the client refuses its
    caller's input (InvalidInput) before sending what a worker would dead-letter."""
    if len(value) > limit:
        raise error(f"field {field!r} is {len(value)} characters, over the limit of {limit}")


def decode_command_entry(entry_id: str, fields: Mapping[bytes, bytes], max_bytes: int) -> Envelope:
    type_ = _text(fields, b"type")
    check_length("type", type_, MAX_TYPE_CHARS)
    if type_ not in COMMAND_TYPES:
        known = ", ".join(sorted(COMMAND_TYPES))
        raise PoisonMessage(f"unknown command type {type_!r} (known: {known})")
    instance_id = _text(fields, b"id")
    if not INSTANCE_ID_RE.match(instance_id):
        raise PoisonMessage(f"invalid instance id {instance_id!r}: 1-200 of A-Z a-z 0-9 _ . : @ + -")
    data = fields.get(b"data", b"{}")
    if len(data) > max_bytes:
        raise PoisonMessage(f"data is {len(data)} bytes, over the limit of {max_bytes}")
    try:
        command = decode_command(type_, data)
    except msgspec.ValidationError as exc:
        raise PoisonMessage(f"invalid {type_!r} data: {exc}") from None
    except msgspec.DecodeError as exc:
        raise PoisonMessage(f"data of {type_!r} is not valid JSON: {exc}") from None
    except RecursionError:  # found by tests/unit/test_fuzz.py: it escaped and failed the whole batch
        raise PoisonMessage(f"data of {type_!r} is nested too deeply") from None
    correlation_id = getattr(command, "correlation_id", None)
    if isinstance(correlation_id, str):
        check_length("correlation_id", correlation_id, MAX_CORRELATION_ID_CHARS)
    traceparent = getattr(command, "traceparent", None)
    if isinstance(traceparent, str) and (problem := traceparent_problem(traceparent)) is not None:
        raise PoisonMessage(problem)
    raw_cmd_id = fields.get(b"cmd_id")
    cmd_id = raw_cmd_id.decode(errors="replace") if raw_cmd_id else None
    if cmd_id is not None:
        check_length("cmd_id", cmd_id, MAX_CMD_ID_CHARS)
    return Envelope(
        instance_id=instance_id,
        entry_id=entry_id,
        command=command,  # type: ignore[arg-type]
        cmd_id=cmd_id,
    )


def command_fields(type_: str, instance_id: str, data: Any, cmd_id: str | None = None) -> dict[str, bytes | str]:
    fields: dict[str, bytes | str] = {"type": type_, "id": instance_id, "data": orjson.dumps(data)}
    if cmd_id:
        fields["cmd_id"] = cmd_id
    return fields


def decode_task_entry(entry_id: str, queue_key: str, fields: Mapping[bytes, bytes]) -> Task:
    try:
        attempt = int(_field(fields, b"attempt"))
    except ValueError:
        raise PoisonMessage("field 'attempt' is not an integer") from None
    try:
        data = decode_task_data(_field(fields, b"data"))
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise PoisonMessage(f"invalid task data: {exc}") from None
    except RecursionError:
        raise PoisonMessage("task data is nested too deeply") from None
    return Task(
        task_id=_text(fields, b"task_id"),
        instance_id=_text(fields, b"id"),
        step=_text(fields, b"step"),
        attempt=attempt,
        reply_to=_text(fields, b"reply_to"),
        service=data.service,
        endpoint=data.endpoint,
        input=data.input,
        context=data.context,
        workflow=data.workflow,
        correlation_id=data.correlation_id,
        kind=data.kind,
        iteration=data.iteration,
        method=data.method,
        idempotency_key=data.idempotency_key,
        http=data.http,
        traceparent=data.traceparent,
        entry_id=entry_id,
        queue_key=queue_key,
    )
