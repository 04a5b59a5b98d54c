"""The definition catalog: registering definitions and fetching them, parsed,
with an in-process cache. (name, version) is immutable once stored, so a cached
parse never goes stale; only "which version is latest" (and whether the
workflow is active) is asked of Redis.

Workflows and steps also have ids, UUIDv5s derived from the deployment's prefix
and the names, so every process computes the same id with no state and an id
stays the same across versions; `ff:defids` maps each id back to its workflow."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any, NamedTuple

from engine.core.definition import Definition, DefinitionError, canonical_json, document_of, parse_definition, version_sort_key
from engine.core.formats.gate import code_problems
from engine.core.ids import encode_shape, filter_shape
from engine.core.language.schema import violations
from engine.errors import InvalidContext, PoisonMessage, Refused, UnknownWorkflow
from engine.store.events import Store
from engine.store.queues import index_queues
from engine.store.replies import text

_NAMESPACE = uuid.UUID("6f1d3f0e-2b7c-5a8e-9c1d-f01df10f0000")


def workflow_uuid(prefix: str, name: str) -> str:
    # The UUID's seed, not a Redis key (so not built in keys.py).
    return str(uuid.uuid5(_NAMESPACE, ":".join((prefix, "workflow", name))))


def step_uuid(workflow_id: str, step_name: str) -> str:
    return str(uuid.uuid5(uuid.UUID(workflow_id), f"step:{step_name}"))


class Head(NamedTuple):
    """What a workflow's hash says besides its bodies (times in ms since the epoch)."""

    latest: str | None
    active: bool
    created_ms: int | None
    updated_ms: int | None


class Catalog:
    def __init__(self, store: Store, max_size: int = 1024, *, code_nodes: str = "off") -> None:
        """``code_nodes``: Settings.code_nodes; only "sandbox" registers definitions that run user code."""
        self.store = store
        self.code_nodes = code_nodes
        self._parsed: dict[tuple[str, str], Definition] = {}
        self._max = max_size

    async def register(
        self, source: str | bytes | Mapping[str, Any], *, fmt: str | None = None,
        name: str | None = None, version: str | None = None,
    ) -> tuple[Definition, bool]:
        """Validate and store; raises DefinitionError (nothing stored) or DefinitionConflict.

        Returns the parsed definition and whether it was new.
        """
        definition = parse_definition(source, fmt=fmt, name=name, version=version)
        doc = dict(document_of(source, fmt=fmt)) if not isinstance(source, Mapping) else dict(source)
        if self.code_nodes != "sandbox" and (refused := code_problems(doc, definition)):
            raise DefinitionError(refused)
        # The stored body is the document itself plus the name and version it was
        # registered under, so a bare definition re-parses to the same thing.
        doc["__name__"], doc["__version__"] = definition.name, definition.version
        created = await self.store.register_definition(
            definition.name, definition.version, canonical_json(doc), version_sort_key(definition.version)
        )
        await self._index_ids(definition)
        await self._index_waits(definition)
        await index_queues(self.store.redis, self.store.keys, definition)
        self._remember(definition)
        return definition, created

    async def _index_ids(self, definition: Definition) -> None:
        wid = workflow_uuid(self.store.keys.prefix, definition.name)
        ids = {wid: definition.name}
        ids.update({step_uuid(wid, s.name): definition.name for s in definition.steps + definition.compensation})
        await self.store.redis.hset(self.store.keys.definition_ids, mapping=ids)  # type: ignore[arg-type]

    async def name_of(self, some_id: str) -> str | None:
        """The workflow a workflow or step id belongs to (registered since ids were indexed)."""
        found = await self.store.redis.hget(self.store.keys.definition_ids, some_id)
        return None if found is None else text(found)

    async def _fields(self, name: str, *fields: str) -> list[Any]:
        pipe = self.store.redis.pipeline(transaction=False)
        for field in fields:
            # HGETs, not HMGET: the client's ACL grants HGET on definitions.
            pipe.hget(self.store.keys.definition(name), field)
        return list(await pipe.execute())

    async def head(self, name: str) -> Head:
        latest, active, created, updated = await self._fields(name, "latest", "active", "created_ms", "updated_ms")
        return Head(latest=None if latest is None else text(latest), active=active is None or text(active) != "0",
                    created_ms=None if created is None else int(created),
                    updated_ms=None if updated is None else int(updated))

    async def startable(self, name: str, version: str | None = None) -> Definition:
        """The definition a start pins; Refused when the workflow is deactivated."""
        # One round trip; the parse itself is cached (a (name, version) never changes).
        latest, active = await self._fields(name, "latest", "active")
        if latest is None:
            raise UnknownWorkflow(f"workflow {name!r} is not registered (any version)")
        if active is not None and text(active) == "0":
            raise Refused(f"workflow {name!r} is deactivated: new starts are refused "
                          "(reactivate it with PUT /workflows/{workflow_id} {\"active\": true})")
        found = await self.get(name, version or text(latest))
        if found is None:
            raise UnknownWorkflow(f"workflow {name!r} is not registered (version {version!r})")
        return found

    async def start_data(self, workflow: str, context: Mapping[str, Any], version: str | None = None,
                         correlation_id: str | None = None) -> dict[str, Any]:
        """The data of a `start` command: the version pinned (latest unless given), the context checked
        against the definition's input schema (InvalidContext naming every violation). Client.start and
        the schedules build their starts here."""
        definition = await self.startable(workflow, version)
        if definition.input_schema:
            problems = violations(definition.input_schema, dict(context))
            if problems:
                raise InvalidContext(f"input does not match the input schema of {workflow!r} {definition.version}:\n  "
                                     + "\n  ".join(problems), problems)
        data: dict[str, Any] = {"workflow": workflow, "version": definition.version, "context": dict(context)}
        if correlation_id:
            data["correlation_id"] = correlation_id
        return data

    async def set_active(self, name: str, active: bool, now_ms: int | None = None) -> None:
        """Allow or refuse new starts; running executions are not touched."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        await self.store.redis.hset(self.store.keys.definition(name),
                                    mapping={"active": "1" if active else "0", "updated_ms": now})

    async def version_times(self, name: str) -> dict[str, int | None]:
        """Every version of a workflow and when it was stored (None: stored before times were kept)."""
        versions = sorted(await self.store.definition_versions(name), key=version_sort_key)
        pipe = self.store.redis.pipeline(transaction=False)
        for version in versions:
            pipe.hget(self.store.keys.definition(name), f"t:{version}")
        times = await pipe.execute() if versions else []
        return {v: None if t is None else int(t) for v, t in zip(versions, times, strict=True)}

    async def _index_waits(self, definition: Definition) -> None:
        """Tell the router which filter shapes to index events by, so none is missed."""
        waits = [s for s in definition.steps if s.type == "event_wait" and s.event_type]
        if not waits:
            return
        pipe = self.store.redis.pipeline(transaction=False)
        for step in waits:
            assert step.event_type is not None
            pipe.sadd(self.store.keys.event_shapes(step.event_type), encode_shape(filter_shape(step.event_filter)))
        await pipe.execute()

    async def get(self, name: str, version: str | None = None) -> Definition | None:
        """The definition (latest when version is None), or None when there is none."""
        if version is not None:
            cached = self._parsed.get((name, version))
            if cached is not None:
                return cached
        found = await self.store.definition_body(name, version)
        if found is None:
            return None
        version, body = found
        cached = self._parsed.get((name, version))
        if cached is not None:
            return cached
        return self._remember(parse_stored(body))

    def cached(self, name: str, version: str) -> Definition | None:
        return self._parsed.get((name, version))

    def _remember(self, definition: Definition) -> Definition:
        if len(self._parsed) >= self._max:
            self._parsed.pop(next(iter(self._parsed)))
        self._parsed[(definition.name, definition.version)] = definition
        return definition


def parse_stored(body: bytes) -> Definition:
    import orjson

    doc = orjson.loads(body)
    name, version = doc.pop("__name__", None), doc.pop("__version__", None)
    try:
        return parse_definition(doc, name=name, version=version, strict=False)
    except DefinitionError as exc:
        raise PoisonMessage(f"stored definition {name!r} {version!r} no longer validates: {exc}") from exc
