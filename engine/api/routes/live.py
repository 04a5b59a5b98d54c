"""Live updates: GET /executions/{execution_id}/stream and GET /events/stream
(Server-Sent Events), WebSocket /ws/workflow/{execution_id} (seed 001's path).

An execution's stream sends each of its events from the first (or after
`Last-Event-ID` / `?after=`) to the last one once the execution is final, then
closes; `failed` counts as final here (a retry is a new command: reconnect with
the last id to follow it). The events stream sends the lifecycle events of every
execution that passes its filters, live, for as long as the client stays.
Both are resumable from any message's `id:`, and a comment heartbeat comes
whenever nothing else was sent for ApiSettings.heartbeat_s. Over the process's
cap a stream is refused with 503 and Retry-After (a WebSocket: close code 1013).
What a subscription costs and how a slow one is cut off: engine/api/live/hub.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Annotated, Any

from litestar import Litestar, Request, WebSocket, get, websocket
from litestar.di import NamedDependency
from litestar.exceptions import WebSocketDisconnect
from litestar.params import FromPath, HeaderParameter, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage

from engine.api.live.cursor import decode_positions, entry_id, resume_from
from engine.api.live.hub import Hub, OverCap, Subscription
from engine.api.live.sources import ExecutionSource, FeedSource
from engine.api.live.sse import (
    HEARTBEAT,
    WS_BAD_REQUEST,
    WS_NOT_FOUND,
    WS_OVER_CAP,
    Closed,
    Message,
    sse,
    ws_frame,
    ws_reason,
)
from engine.api.problems import Problem, problems
from engine.api.services import Services
from engine.errors import InvalidInput, NotFound
from projections.lifecycle import NAMES

LIFECYCLE_TYPES = frozenset(NAMES.values())
RESUME = "the `id:` of the last message received; Last-Event-ID (sent by EventSource on reconnect) wins"
LAST_EVENT_ID = HeaderParameter(name="Last-Event-ID", description=RESUME, max_length=2000)


def hub_of(app: Litestar, services: Services) -> Hub:
    """The process's hub, built at the first subscription (tests may put their own in app.state.live)."""
    hub: Hub | None = app.state.get("live")
    if hub is None:
        hub = app.state.live = Hub(services.blocking, services.api)
    return hub


def _admit(hub: Hub) -> Subscription:
    try:
        return hub.admit()
    except OverCap as exc:
        raise Problem(503, str(exc), headers={"Retry-After": "1"}) from None


async def _frames(subscription: Subscription) -> AsyncIterator[ServerSentEventMessage]:
    async for item in subscription.items():
        yield HEARTBEAT if item is None else sse(item)


def _execution_source(services: Services, hub: Hub, execution_id: str, resume: str | None,
                      follow: bool) -> ExecutionSource:
    # Every read of a subscription, short ones too, is on the hub's pool: a burst of subscribers then
    # waits for a connection there instead of exhausting the request pool (503s on other routes).
    return ExecutionSource(hub.blocking, hub.blocking, services.client.keys, services.settings.prefix,
                           execution_id, after=entry_id(resume) if resume else None, follow=follow)


@get("/executions/{execution_id:str}/stream", tags=["live"], media_type="text/event-stream",
     summary="Server-Sent Events: the execution's events, from the first (or after a resume id) to the final one",
     responses=problems(400, 404))
async def execution_stream(
    request: Request[Any, Any, Any], services: NamedDependency[Services], execution_id: FromPath[str],
    after: Annotated[str | None, QueryParameter(name="after", description=RESUME, max_length=64)] = None,
    last_event_id: Annotated[str | None, LAST_EVENT_ID] = None,
    follow: Annotated[bool, QueryParameter(name="follow", description="false: send the events so far, then close")]
    = True,
) -> ServerSentEvent:
    hub = hub_of(request.app, services)
    resume = resume_from(last_event_id, after)
    source = _execution_source(services, hub, execution_id, resume, follow)
    subscription = _admit(hub)
    try:
        await source.open()
    except BaseException:
        await subscription.close()
        raise
    return ServerSentEvent(_frames(subscription.start(source)))


def _types(raw: str | None) -> frozenset[str]:
    types = frozenset(t.strip() for t in (raw or "").split(",") if t.strip())
    unknown = sorted(types - LIFECYCLE_TYPES)
    if unknown:
        raise InvalidInput(f"type {', '.join(map(repr, unknown))} is not a lifecycle event type; "
                           f"one of {', '.join(sorted(LIFECYCLE_TYPES))}")
    return types


@get("/events/stream", tags=["live"], media_type="text/event-stream",
     summary="Server-Sent Events: the lifecycle events of every execution that matches, live",
     responses=problems(400))
async def events_stream(
    request: Request[Any, Any, Any], services: NamedDependency[Services],
    correlation_id: Annotated[str | None, QueryParameter(name="correlation_id", max_length=200)] = None,
    workflow: Annotated[str | None, QueryParameter(name="workflow", max_length=200,
                                                   description="a workflow's name or id")] = None,
    types: Annotated[str | None, QueryParameter(
        name="type", max_length=1000, description="lifecycle event types, comma-separated (any, when absent)")] = None,
    after: Annotated[str | None, QueryParameter(name="after", max_length=2000, description=RESUME)] = None,
    last_event_id: Annotated[str | None, LAST_EVENT_ID] = None,
) -> ServerSentEvent:
    hub = hub_of(request.app, services)
    resume = resume_from(last_event_id, after)
    keys = services.client.keys
    source = FeedSource(hub.blocking, hub.blocking, keys, services.settings.prefix, hub.contexts,
                        positions=decode_positions(resume, keys.partitions) if resume else None,
                        correlation_id=correlation_id, workflow=workflow, types=_types(types))
    subscription = _admit(hub)
    try:
        await source.open()
    except BaseException:
        await subscription.close()
        raise
    return ServerSentEvent(_frames(subscription.start(source)))


async def _until_disconnect(socket: WebSocket[Any, Any, Any]) -> None:
    """What the client sends is not read for anything; this only notices it leave."""
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            await socket.receive_data(mode="text")


async def _refuse(socket: WebSocket[Any, Any, Any], code: int, reason: str) -> None:
    await socket.close(code=code, reason=ws_reason(reason))


async def _open_socket(socket: WebSocket[Any, Any, Any], services: Services,
                       execution_id: str) -> Subscription | None:
    hub = hub_of(socket.app, services)
    try:
        resume = resume_from(None, socket.query_params.get("after"))
        source = _execution_source(services, hub, execution_id, resume, socket.query_params.get("follow") != "false")
        subscription = hub.admit()
    except OverCap as exc:
        await _refuse(socket, WS_OVER_CAP, str(exc))
        return None
    except InvalidInput as exc:
        await _refuse(socket, WS_BAD_REQUEST, str(exc))
        return None
    try:
        await source.open()
    except NotFound as exc:
        await subscription.close()
        await _refuse(socket, WS_NOT_FOUND, str(exc))
        return None
    except BaseException:
        await subscription.close()
        raise
    return subscription.start(source)


@websocket("/ws/workflow/{execution_id:str}", tags=["live"])
async def workflow_socket(socket: WebSocket[Any, Any, Any], services: NamedDependency[Services],
                          execution_id: FromPath[str]) -> None:
    """The execution's stream as JSON text frames `{"id", "event", "data"}`; `?after=` resumes. Closes with
    1000 once the execution is final, 1008 when the client is too slow, 1011 when Redis is away,
    1013 over the cap, 4404 for an unknown execution, 4400 for a bad id."""
    await socket.accept()
    subscription = await _open_socket(socket, services, execution_id)
    if subscription is None:
        return
    watcher = asyncio.create_task(_until_disconnect(socket))
    try:
        async for item in subscription.items():
            if watcher.done():
                return
            if isinstance(item, Closed):
                await _refuse(socket, item.ws_code, item.reason)
                return
            if isinstance(item, Message):
                await socket.send_data(ws_frame(item), mode="text")
    finally:
        watcher.cancel()
        await subscription.close()


ROUTES = [execution_stream, events_stream, workflow_socket]
