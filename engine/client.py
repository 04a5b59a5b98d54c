"""The Python API for services: register definitions, start instances, send
commands, publish events, and read an instance's status and history.

Everything it writes is an XADD of a command or event as streams.md describes,
so a service in any other language can do the same with redis-cli.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

import orjson

from engine.config import Settings
from engine.core.codec import MAX_CMD_ID_CHARS, MAX_CORRELATION_ID_CHARS, MAX_TYPE_CHARS, check_length, command_fields
from engine.core.definition import Definition, version_sort_key
from engine.core.evolve import fold_stored
from engine.core.ids import INSTANCE_ID_RE, traceparent_problem
from engine.core.model import INITIAL, STATUS_NONE, TERMINAL, State, encode
from engine.errors import InvalidInput, UnknownInstance, UnknownWorkflow
from engine.runtime import tracing
from engine.store.catalog import Catalog
from engine.store.connection import Redis, connect
from engine.store.errors import translate_methods
from engine.store.events import Store, event_type
from engine.store.keys import Keys
from engine.store.published import EventLog, Published, event_fields
from engine.store.replies import text

FINAL_STATUSES = frozenset(TERMINAL | {"failed"})


@translate_methods
class Client:
    def __init__(self, redis: Redis, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.redis = redis
        self.keys = Keys(self.settings.prefix, self.settings.partitions)
        self.store = Store(redis, self.keys)
        self.catalog = Catalog(self.store, code_nodes=self.settings.code_nodes)
        self.events = EventLog(self.store, self.keys)

    @classmethod
    def from_url(cls, url: str, settings: Settings | None = None) -> Client:
        return cls(connect(url), settings)

    async def close(self) -> None:
        await self.redis.aclose()

    # -- definitions ---------------------------------------------------------
    async def register(
        self, source: str | bytes | Mapping[str, Any], *, fmt: str | None = None,
        name: str | None = None, version: str | None = None,
    ) -> tuple[Definition, bool]:
        """Validate and store a definition (DefinitionError lists every problem; nothing stored)."""
        return await self.catalog.register(source, fmt=fmt, name=name, version=version)

    async def definition(self, name: str, version: str | None = None) -> Definition:
        found = await self.catalog.get(name, version)
        if found is None:
            which = f"version {version!r}" if version else "any version"
            raise UnknownWorkflow(f"workflow {name!r} is not registered ({which})")
        return found

    async def set_active(self, workflow: str, active: bool) -> None:
        """Deactivate (new starts refused) or reactivate a registered workflow."""
        if (await self.catalog.head(workflow)).latest is None:
            raise UnknownWorkflow(f"workflow {workflow!r} is not registered")
        await self.catalog.set_active(workflow, active)

    async def definitions(self) -> list[dict[str, Any]]:
        """Every registered definition: name, versions (oldest first) and latest."""
        names = sorted(text(n)
                       for n in await self.redis.smembers(self.keys.definitions_index))
        out = []
        for name in names:
            versions = sorted(await self.store.definition_versions(name), key=version_sort_key)
            latest = await self.redis.hget(self.keys.definition(name), "latest")
            out.append({"name": name, "versions": versions,
                        "latest": text(latest)})
        return out

    async def definition_document(self, name: str, version: str) -> Any:
        found = await self.store.definition_body(name, version)
        if found is None:
            raise UnknownWorkflow(f"workflow {name!r} version {version!r} is not registered")
        doc = orjson.loads(found[1])
        doc.pop("__name__", None)
        doc.pop("__version__", None)
        return doc

    # -- commands --------------------------------------------------------------
    async def start(
        self, workflow: str, context: Mapping[str, Any] | None = None, *, version: str | None = None,
        correlation_id: str | None = None, instance_id: str | None = None, traceparent: str | None = None,
        priority: int = 0, tenant: str | None = None,
    ) -> str:
        """Start an instance; returns its id. The version is pinned here (latest unless given).

        ``traceparent`` (W3C trace context) is carried by every task of the instance.
        Refused when the workflow is deactivated (running instances are not affected)."""
        if traceparent is not None and (problem := traceparent_problem(traceparent)) is not None:
            raise InvalidInput(problem)
        data = await self.catalog.start_data(workflow, context or {}, version, correlation_id)
        iid = instance_id or uuid.uuid4().hex
        if not 0 <= priority <= 9 or isinstance(priority, bool):  # admission control (engine/workers/admission.py)
            raise InvalidInput(f"priority must be an integer 0-9 (higher is more urgent), got {priority!r}")
        if priority:
            data["priority"] = priority
        if tenant:
            data["tenant"] = tenant
        if traceparent:
            data["traceparent"] = traceparent
        if not tracing.decided:  # a process that is no role (the CLI, a service) reads OTEL_* here, once
            tracing.setup("client")
        if tracing.enabled:  # the start's span; every task of the execution carries its context
            with tracing.start_span(workflow, iid, traceparent) as stored:
                data["traceparent"] = stored
                await self.send("start", iid, data, cmd_id=f"start:{iid}")
            return iid
        await self.send("start", iid, data, cmd_id=f"start:{iid}")
        return iid

    async def cancel(self, instance_id: str, reason: str | None = None, *, cmd_id: str | None = None) -> str:
        return await self._control("cancel", instance_id, {"reason": reason} if reason else {}, cmd_id)

    async def pause(self, instance_id: str, reason: str | None = None, *, cmd_id: str | None = None) -> str:
        return await self._control("pause", instance_id, {"reason": reason} if reason else {}, cmd_id)

    async def resume(self, instance_id: str, *, cmd_id: str | None = None) -> str:
        return await self._control("resume", instance_id, {}, cmd_id)

    async def retry(self, instance_id: str, *, from_step: str | None = None, input: Any = None,
                    cmd_id: str | None = None) -> str:
        """Run a failed instance again; from_step rewinds to that step, input edits its input."""
        data: dict[str, Any] = {}
        if from_step is not None:
            data["from_step"] = from_step
        if input is not None:
            data["input"] = input
        return await self._control("retry", instance_id, data, cmd_id)

    async def signal(self, instance_id: str, name: str, payload: Any = None, *, cmd_id: str | None = None) -> str:
        """Deliver a named payload to a running instance (templates read signals.<name>)."""
        return await self._control("signal", instance_id, {"name": name, "payload": payload}, cmd_id)

    async def _control(self, type_: str, instance_id: str, data: dict[str, Any], cmd_id: str | None) -> str:
        if (await self.state(instance_id)).status == STATUS_NONE:
            raise UnknownInstance(f"no instance {instance_id!r}")
        return await self.send(type_, instance_id, data, cmd_id=cmd_id or f"{type_}:{uuid.uuid4().hex}")

    async def send(self, type_: str, instance_id: str, data: Mapping[str, Any], *, cmd_id: str | None = None) -> str:
        """XADD one command to the instance's partition inbox; returns the entry id."""
        _check_id(instance_id)
        check_length("type", type_, MAX_TYPE_CHARS, InvalidInput)
        check_length("cmd_id", cmd_id or "", MAX_CMD_ID_CHARS, InvalidInput)
        corr = data.get("correlation_id")
        check_length("correlation_id", corr if isinstance(corr, str) else "", MAX_CORRELATION_ID_CHARS, InvalidInput)
        try:
            fields = command_fields(type_, instance_id, dict(data), cmd_id)
        except TypeError as exc:  # orjson: not JSON, or nested deeper than it encodes
            raise InvalidInput(f"{type_} data cannot be sent as JSON: {exc}") from None
        if len(fields["data"]) > self.settings.max_payload_bytes:
            raise InvalidInput(
                f"{type_} data is {len(fields['data'])} bytes, over the limit of {self.settings.max_payload_bytes}"
            )
        entry = await self.redis.xadd(self.keys.inbox(self.keys.partition(instance_id)), fields)  # type: ignore[arg-type]
        return text(entry)

    async def publish(self, type_: str, data: Mapping[str, Any], *, correlation_id: str | None = None,
                      event_id: str | None = None, source: str | None = None, timestamp: str | None = None) -> str:
        """XADD an external event to the events stream; returns its entry id (for an event_id
        published before, the first entry's, and nothing is added)."""
        published = await self.publish_event(type_, data, correlation_id=correlation_id, event_id=event_id,
                                             source=source, timestamp=timestamp)
        return published.entry_id

    async def publish_event(self, type_: str, data: Mapping[str, Any], *, correlation_id: str | None = None,
                            event_id: str | None = None, source: str | None = None,
                            timestamp: str | None = None) -> Published:
        """Publish in the seed's envelope: an event_id is published at most once (while its record
        is kept, FOLDFLOW_EVENT_RETENTION_MS); without one the entry id is the event's id."""
        try:
            body = orjson.dumps(dict(data))
        except TypeError as exc:
            raise InvalidInput(f"event data cannot be sent as JSON: {exc}") from None
        if len(body) > self.settings.max_payload_bytes:
            raise InvalidInput(f"event data is {len(body)} bytes, over the limit of {self.settings.max_payload_bytes}")
        fields = event_fields(type_, body, correlation_id=correlation_id, event_id=event_id, source=source,
                              timestamp=timestamp)
        return await self.events.publish(fields, self.settings.event_retention_ms)

    # -- reads -------------------------------------------------------------------
    async def state(self, instance_id: str) -> State:
        _check_id(instance_id)
        events = await self.store.read_events(instance_id)
        return fold_stored(INITIAL, ((e, ts) for _, e, ts in events))

    async def history(self, instance_id: str) -> list[dict[str, Any]]:
        _check_id(instance_id)
        events = await self.store.read_events(instance_id)
        if not events:
            raise UnknownInstance(f"no instance {instance_id!r}")
        out = []
        for i, (entry_id, event, ts) in enumerate(events, 1):
            data = orjson.loads(encode(event))
            data.pop("type", None)
            out.append({"version": i, "type": event_type(event), "ts": ts, "entry_id": entry_id, "data": data})
        return out

    async def status(self, instance_id: str) -> dict[str, Any]:
        state = await self.state(instance_id)
        if state.status == STATUS_NONE:
            raise UnknownInstance(f"no instance {instance_id!r}")
        assert state.workflow is not None
        definition = await self.catalog.get(state.workflow, state.def_version)
        names = [s.name for s in definition.steps] if definition else list(state.steps)
        return status_view(state, names)

    async def wait(self, instance_id: str, timeout: float = 30.0, statuses: frozenset[str] = FINAL_STATUSES) -> State:
        """Until the instance reaches one of statuses; blocks on its stream, not a poll loop."""
        deadline = time.monotonic() + timeout
        last: str | None = None
        state = INITIAL
        while True:
            stored = await self.store.read_events(instance_id, after=last)
            if stored:
                state = fold_stored(state, ((e, ts) for _, e, ts in stored))
                last = stored[-1][0]
            if state.status in statuses:
                return state
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"instance {instance_id!r} is {state.status} after {timeout}s")
            await self.redis.xread({self.keys.instance(instance_id): last or "0-0"},
                                   block=max(1, int(min(remaining, 1.0) * 1000)))


def status_view(state: State, step_names: list[str]) -> dict[str, Any]:
    steps = {}
    for name in step_names + [n for n in state.steps if n not in step_names]:
        st = state.step(name)
        item: dict[str, Any] = {"status": st.status, "attempt": st.attempt, "output": st.output}
        if st.error is not None:
            item["error"] = orjson.loads(encode(st.error))
        if st.retry_at is not None:
            item["retry_at"] = st.retry_at
        if st.wait is not None:
            item["waiting_for"] = {"event_type": st.wait.event_type, "filter": st.wait.filter}
        steps[name] = item
    return {
        "id": state.id,
        "workflow": state.workflow,
        "version": state.def_version,
        "status": state.status,
        "correlation_id": state.correlation_id,
        "context": state.context,
        "steps": steps,
        "output": state.output,
        "error": orjson.loads(encode(state.error)) if state.error else None,
        "failed_step": state.failed_step,
        "created_ms": state.created_ms,
        "updated_ms": state.updated_ms,
        "finished_ms": state.finished_ms,
        "events": state.version,
    }



def _check_id(instance_id: str) -> None:
    if not INSTANCE_ID_RE.match(instance_id):
        raise InvalidInput(f"invalid instance id {instance_id!r}: 1-200 of A-Z a-z 0-9 _ . : @ + - (starting alphanumeric)")
