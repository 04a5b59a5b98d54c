"""What a subscription yields and how each transport frames it. Pure.

A subscriber gets `Message`s (one per event: id, event type, envelope), then one
`Closed` saying why the stream ends: the execution reached a final status, or the
subscriber was cut off (too slow, Redis away). SSE frames a message as
`id:`/`event:`/`data:`; a `Closed` as a last `event: close` whose data names the
reason, then the response ends. WebSocket sends each message as a JSON text frame
`{"id", "event", "data"}` and a `Closed` as the close code and reason."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from litestar.response import ServerSentEventMessage

# WebSocket close codes (RFC 6455 section 7.4.1): 1000 done, 1008 policy (too slow),
# 1011 server error (Redis away), 1013 try again later (over the cap).
WS_DONE, WS_TOO_SLOW, WS_UNAVAILABLE, WS_OVER_CAP = 1000, 1008, 1011, 1013
# Application codes (4000-4999) for refusals an HTTP route answers with a status.
WS_NOT_FOUND, WS_BAD_REQUEST = 4404, 4400


class Message:
    """One event for subscribers. Every subscriber of an execution gets the same object
    (tail.py), so each framing is encoded once and kept."""

    __slots__ = ("_sse", "_ws", "data", "event", "id")

    def __init__(self, id: str, event: str, data: dict[str, Any]) -> None:
        self.id, self.event, self.data = id, event, data
        self._sse: ServerSentEventMessage | None = None
        self._ws: str | None = None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Message) and (self.id, self.event, self.data) == (other.id, other.event, other.data)

    def __repr__(self) -> str:
        return f"Message({self.id!r}, {self.event!r})"


class _Encoded(ServerSentEventMessage):
    """A message Litestar sends as the bytes encoded once (it calls encode() per response)."""

    def __init__(self, raw: bytes) -> None:
        super().__init__(data=None)
        self.raw = raw

    def encode(self) -> bytes:
        return self.raw


@dataclass(frozen=True, slots=True)
class Closed:
    reason: str
    kind: str = "final"
    """final (the execution is done), too_slow, or unavailable."""

    @property
    def ws_code(self) -> int:
        return {"final": WS_DONE, "too_slow": WS_TOO_SLOW}.get(self.kind, WS_UNAVAILABLE)


HEARTBEAT = ServerSentEventMessage(comment="heartbeat", data=None)


def sse(item: Message | Closed) -> ServerSentEventMessage:
    if isinstance(item, Message):
        if item._sse is None:
            item._sse = _Encoded(ServerSentEventMessage(data=orjson.dumps(item.data).decode(), event=item.event,
                                                        id=item.id).encode())
        return item._sse
    return ServerSentEventMessage(data=orjson.dumps({"reason": item.reason, "kind": item.kind}).decode(),
                                  event="close")


def ws_frame(item: Message) -> str:
    if item._ws is None:
        item._ws = orjson.dumps({"id": item.id, "event": item.event, "data": item.data}).decode()
    return item._ws


def ws_reason(reason: str) -> str:
    """A close reason fits in a control frame: 123 bytes of UTF-8."""
    raw = reason.encode()
    return reason if len(raw) <= 123 else raw[:120].decode(errors="ignore") + "..."
