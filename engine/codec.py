"""Entries on the wire <-> typed messages. Anything malformed becomes a
PoisonMessage whose text names the problem; the worker dead-letters it."""

from __future__ import annotations

from typing import Any, Mapping

import msgspec
import orjson

from .errors import PoisonMessage
from .keys import INSTANCE_ID_RE
from .model import COMMAND_TYPES, Envelope, Task, decode_command, decode_task_data


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


def decode_command_entry(entry_id: str, fields: Mapping[bytes, bytes], max_bytes: int) -> Envelope:
    type_ = _text(fields, b"type")
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
    except RecursionError:  # found by tests/test_fuzz.py: it escaped and failed the whole batch
        raise PoisonMessage(f"data of {type_!r} is nested too deeply") from None
    cmd_id = fields.get(b"cmd_id")
    return Envelope(
        instance_id=instance_id,
        entry_id=entry_id,
        command=command,  # type: ignore[arg-type]
        cmd_id=cmd_id.decode(errors="replace") if cmd_id else None,
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
        entry_id=entry_id,
        queue_key=queue_key,
    )
