"""Live updates over a real `foldflow api` process: SSE read with httpx, the
WebSocket with the websockets client, the subscription cap and a slow client
cut off (a raw socket that never reads), each against real worker, projector
and activity processes."""

from __future__ import annotations

import asyncio
import functools
import json
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import jwt
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as ws_connect

from engine.client import Client
from engine.config import Settings
from engine.core.model import State
from tests.support.api_stack import ApiStack
from tests.support.poll import wait_for
from tests.support.tools import EXAMPLES

T = TypeVar("T")
WORKFLOW = "Agent Task Execution"
TIMEOUT = httpx.Timeout(30.0)


async def call(stack: ApiStack, fn: Callable[[Client], Awaitable[T]]) -> T:
    settings = Settings(redis_url=stack.redis_url, prefix=stack.prefix, partitions=stack.partitions)
    client = Client.from_url(stack.redis_url, settings)
    try:
        return await fn(client)
    finally:
        await client.close()


def with_client(stack: ApiStack, fn: Callable[[Client], Awaitable[T]]) -> T:
    return asyncio.run(call(stack, fn))


def state(stack: ApiStack, iid: str) -> Callable[[], Awaitable[State]]:
    return lambda: call(stack, lambda c: c.state(iid))


@pytest.fixture(scope="module", autouse=True)
def registered(stack: ApiStack) -> None:
    source = (EXAMPLES / "agent-task-execution.json").read_text()
    with_client(stack, lambda c: c.register(source, fmt="json"))


def start(stack: ApiStack, correlation_id: str | None = None) -> tuple[str, dict[str, str]]:
    ctx = {"project_id": "p-1", "task_id": f"t-{uuid.uuid4().hex[:8]}", "agent_id": "a-1"}
    iid = f"live-{uuid.uuid4().hex[:10]}"
    with_client(stack, lambda c: c.start(WORKFLOW, ctx, instance_id=iid, correlation_id=correlation_id))
    wait_for(state(stack, iid), what=f"{iid} created",
             ok=lambda s: s.status != "none")
    return iid, ctx


def agent_done(stack: ApiStack, ctx: dict[str, str]) -> None:
    with_client(stack, lambda c: c.publish("agent.task_completed",
                                           {"task_id": ctx["task_id"], "agent_id": ctx["agent_id"]}))


def sse(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """Each SSE message as {id, event, data (decoded)}; a comment as {"comment": text}."""
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if line == "":
            if fields:
                yield {"id": fields.get("id"), "event": fields.get("event"), "data": json.loads(fields["data"])}
            fields = {}
        elif line.startswith(":"):
            yield {"comment": line[1:].strip()}
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            fields[name] = f"{fields[name]}\n{value}" if name in fields else value


def waiting_for_agent(message: dict[str, Any]) -> bool:
    return (message.get("event") == "workflow.step_started"
            and message["data"]["data"].get("step") == "execution_monitoring")


async def signal(client: Client, *, iid: str, name: str, payload: str) -> str:
    return await client.signal(iid, name, payload)


def history_ids(stack: ApiStack, iid: str) -> list[str]:
    return [e["entry_id"] for e in with_client(stack, lambda c: c.history(iid))]


def test_a_whole_execution_is_streamed_from_first_to_final_event_then_closed(stack: ApiStack) -> None:
    iid, ctx = start(stack, correlation_id=f"c-{uuid.uuid4().hex[:6]}")
    messages = []
    with httpx.stream("GET", f"{stack.url}/executions/{iid}/stream", timeout=TIMEOUT) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-accel-buffering"] == "no"
        for message in sse(response):
            if "comment" in message:
                continue
            messages.append(message)
            if waiting_for_agent(message):
                agent_done(stack, ctx)
    *events, close = messages
    assert close["event"] == "close" and close["data"]["kind"] == "final"
    assert f"execution {iid} is completed" in close["data"]["reason"]
    assert [m["id"] for m in events] == history_ids(stack, iid)
    assert events[0]["event"] == "workflow.created" and events[1]["event"] == "workflow.started"
    assert events[-1]["event"] == "workflow.completed"
    started = events[1]["data"]
    assert set(started) == {"id", "type", "source", "timestamp", "correlation_id", "data"}
    assert started["id"] == f"{iid}:2" and started["type"] == "workflow.started"
    assert started["source"] == f"foldflow/{WORKFLOW}" and started["timestamp"].endswith("Z")
    assert started["data"]["workflow_type"] == WORKFLOW and started["data"]["context"] == ctx
    assert started["data"]["execution_id"] == iid and started["data"]["workflow_id"]
    assert all(m["data"]["correlation_id"] == started["correlation_id"] for m in events)


def test_resume_after_a_dropped_connection_misses_nothing_and_repeats_nothing(stack: ApiStack) -> None:
    iid, ctx = start(stack)
    first: list[dict[str, Any]] = []
    with httpx.stream("GET", f"{stack.url}/executions/{iid}/stream", timeout=TIMEOUT) as response:
        for message in sse(response):
            if "comment" not in message:
                first.append(message)
            if waiting_for_agent(message):
                break  # the connection drops here, mid-execution
    agent_done(stack, ctx)
    wait_for(state(stack, iid), what="completed",
             ok=lambda s: s.status == "completed")
    headers = {"Last-Event-ID": first[-1]["id"]}
    # ?after= is the older position a reconnecting EventSource keeps in its URL: the header wins
    url = f"{stack.url}/executions/{iid}/stream?after={first[0]['id']}"
    with httpx.stream("GET", url, headers=headers, timeout=TIMEOUT) as response:
        rest = [m for m in sse(response) if "comment" not in m]
    assert rest[-1]["event"] == "close"
    assert [m["id"] for m in first + rest[:-1]] == history_ids(stack, iid)


def test_follow_false_sends_the_history_so_far_and_closes(stack: ApiStack) -> None:
    iid, _ = start(stack)
    wait_for(state(stack, iid), what="waiting",
             ok=lambda s: s.step("execution_monitoring").status == "waiting")
    response = httpx.get(f"{stack.url}/executions/{iid}/stream?follow=false", timeout=TIMEOUT)
    *events, close = [m for m in sse(response) if "comment" not in m]
    assert [m["id"] for m in events] == history_ids(stack, iid)
    assert close["event"] == "close"


def test_unknown_execution_and_bad_resume_ids_are_refused_before_streaming(stack: ApiStack) -> None:
    missing = httpx.get(f"{stack.url}/executions/nope-{uuid.uuid4().hex}/stream", timeout=TIMEOUT)
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
    bad = httpx.get(f"{stack.url}/executions/x/stream?after=yesterday", timeout=TIMEOUT)
    assert bad.status_code == 400 and "stream entry id" in bad.json()["detail"]
    cursor = httpx.get(f"{stack.url}/events/stream?after=1-0", timeout=TIMEOUT)
    assert cursor.status_code == 400 and "partition" in cursor.json()["detail"]
    kind = httpx.get(f"{stack.url}/events/stream?type=agent.task_completed", timeout=TIMEOUT)
    assert kind.status_code == 400 and "lifecycle event type" in kind.json()["detail"]


def test_the_websocket_sends_the_same_messages_as_json_frames(stack: ApiStack) -> None:
    iid, ctx = start(stack)
    frames = []
    with ws_connect(f"ws://127.0.0.1:{stack.ports[0]}/ws/workflow/{iid}", open_timeout=10) as ws:
        try:
            while True:
                frame = json.loads(ws.recv(timeout=30))
                frames.append(frame)
                if waiting_for_agent(frame):
                    agent_done(stack, ctx)
        except ConnectionClosed as closed:
            assert closed.rcvd is not None and closed.rcvd.code == 1000
            assert "completed" in closed.rcvd.reason
    assert [f["id"] for f in frames] == history_ids(stack, iid)
    assert frames[-1]["event"] == "workflow.completed" and frames[-1]["data"]["type"] == "workflow.completed"
    with ws_connect(f"ws://127.0.0.1:{stack.ports[0]}/ws/workflow/{iid}?after={frames[-2]['id']}") as ws:
        assert json.loads(ws.recv(timeout=30))["id"] == frames[-1]["id"]
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=30)
    with ws_connect(f"ws://127.0.0.1:{stack.ports[0]}/ws/workflow/unknown-{uuid.uuid4().hex}") as ws:
        with pytest.raises(ConnectionClosed) as refused:
            ws.recv(timeout=30)
        assert refused.value.rcvd is not None and refused.value.rcvd.code == 4404


def test_the_events_stream_sends_matching_lifecycle_events_and_resumes(stack: ApiStack) -> None:
    corr = f"c-{uuid.uuid4().hex[:8]}"
    seen: list[dict[str, Any]] = []
    with httpx.stream("GET", f"{stack.url}/events/stream?correlation_id={corr}", timeout=TIMEOUT) as response:
        assert response.status_code == 200
        start(stack)  # another correlation id: filtered out
        iid, ctx = start(stack, correlation_id=corr)
        for message in sse(response):
            if "comment" in message:
                continue
            seen.append(message)
            if waiting_for_agent(message):
                break
    assert {m["data"]["correlation_id"] for m in seen} == {corr}
    assert {m["data"]["data"]["execution_id"] for m in seen} == {iid}
    assert seen[0]["event"] == "workflow.started"  # lifecycle events only: no workflow.created
    agent_done(stack, ctx)
    rest: list[dict[str, Any]] = []
    url = f"{stack.url}/events/stream?correlation_id={corr}&type=workflow.step_completed,workflow.completed"
    with httpx.stream("GET", url, headers={"Last-Event-ID": seen[-1]["id"]}, timeout=TIMEOUT) as response:
        for message in sse(response):
            if "comment" not in message:
                rest.append(message)
            if message.get("event") == "workflow.completed":
                break
    steps = [m["data"]["data"]["step"] for m in rest if m["event"] == "workflow.step_completed"]
    assert steps == ["execution_monitoring", "result_processing"]
    assert len({m["id"] for m in seen + rest}) == len(seen + rest)


@pytest.fixture(scope="module")
def small(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiStack]:
    """A second deployment whose API takes 2 subscriptions, with room for 4 messages each."""
    logs: Path = tmp_path_factory.mktemp("api-small")
    env = {"FOLDFLOW_API_MAX_SUBSCRIPTIONS": "2", "FOLDFLOW_API_SUBSCRIPTION_BUFFER": "4"}
    with ApiStack(redis_url, logs, env=env) as running:
        source = (EXAMPLES / "agent-task-execution.json").read_text()
        with_client(running, lambda c: c.register(source, fmt="json"))
        yield running


def test_over_the_cap_streams_get_503_with_retry_after_and_sockets_1013(small: ApiStack) -> None:
    with httpx.Client(timeout=TIMEOUT) as http:
        with http.stream("GET", f"{small.url}/events/stream") as one, \
                http.stream("GET", f"{small.url}/events/stream") as two:
            assert one.status_code == two.status_code == 200
            over = http.get(f"{small.url}/events/stream")
            assert over.status_code == 503 and over.headers["retry-after"] == "1"
            assert "maximum of 2 live subscriptions" in over.json()["detail"]
            with ws_connect(f"ws://127.0.0.1:{small.ports[0]}/ws/workflow/any") as ws:
                with pytest.raises(ConnectionClosed) as refused:
                    ws.recv(timeout=30)
                assert refused.value.rcvd is not None and refused.value.rcvd.code == 1013
        # both closed: their slots come back
        wait_for(lambda: _status(http, f"{small.url}/events/stream"), what="a slot", ok=lambda s: s == 200)


def _status(http: httpx.Client, url: str) -> int:
    with http.stream("GET", url) as response:
        return response.status_code


def test_a_slow_client_is_cut_off_with_a_reason_and_can_resume(small: ApiStack) -> None:
    iid, _ = start(small)
    wait_for(state(small, iid), what="waiting",
             ok=lambda s: s.step("execution_monitoring").status == "waiting")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", small.ports[0]))
    sock.sendall(f"GET /executions/{iid}/stream HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    payload = "x" * 300_000
    for n in range(40):  # ~12 MB of events the client does not read, a signal at a time
        with_client(small, functools.partial(signal, iid=iid, name=f"s{n}", payload=payload))
    wait_for(state(small, iid), what="signals applied",
             ok=lambda s: len(s.signals) == 40)
    received = bytearray()
    sock.settimeout(30)
    while b'"kind":"too_slow"' not in received:
        chunk = sock.recv(1 << 20)
        assert chunk, f"closed without a reason after {len(received)} bytes"
        received += chunk
    sock.close()
    text = received.decode(errors="replace")
    assert "event: close" in text and "too slow: more than 4 messages" in text
    assert text.count("event: workflow.signal_received") < 40


def test_streams_and_sockets_take_the_token_as_access_token(redis_url: str, tmp_path: Path) -> None:
    secret = "live-test-secret-of-at-least-32-bytes!"
    with ApiStack(redis_url, tmp_path, workers=False, activities=None, env={"FOLDFLOW_JWT_SECRET": secret}) as api:
        token = jwt.encode({"scope": "read", "exp": int(time.time()) + 600}, secret, algorithm="HS256")
        assert httpx.get(f"{api.url}/events/stream", timeout=TIMEOUT).status_code == 401
        with httpx.stream("GET", f"{api.url}/events/stream?access_token={token}", timeout=TIMEOUT) as response:
            assert response.status_code == 200
        missing = httpx.get(f"{api.url}/executions/nobody/stream?access_token={token}", timeout=TIMEOUT)
        assert missing.status_code == 404
        with ws_connect(f"ws://127.0.0.1:{api.ports[0]}/ws/workflow/nobody?access_token={token}") as ws:
            with pytest.raises(ConnectionClosed) as refused:
                ws.recv(timeout=30)
            assert refused.value.rcvd is not None and refused.value.rcvd.code == 4404
        with pytest.raises(InvalidStatus) as unauthorized:  # refused at the handshake
            ws_connect(f"ws://127.0.0.1:{api.ports[0]}/ws/workflow/nobody")
        assert unauthorized.value.response.status_code == 401
