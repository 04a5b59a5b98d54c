"""The definition catalog: registering definitions and fetching them, parsed,
with an in-process cache. (name, version) is immutable once stored, so a cached
parse never goes stale; only "which version is latest" is asked of Redis."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.core.definition import Definition, DefinitionError, canonical_json, document_of, parse_definition, version_sort_key
from engine.core.ids import encode_shape, filter_shape
from engine.errors import PoisonMessage
from engine.store.events import Store


class Catalog:
    def __init__(self, store: Store, max_size: int = 1024) -> None:
        self.store = store
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
        # The stored body is the document itself plus the name and version it was
        # registered under, so a bare definition re-parses to the same thing.
        doc["__name__"], doc["__version__"] = definition.name, definition.version
        created = await self.store.register_definition(
            definition.name, definition.version, canonical_json(doc), version_sort_key(definition.version)
        )
        await self._index_waits(definition)
        self._remember(definition)
        return definition, created

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
