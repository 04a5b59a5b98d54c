"""What every projection is: a pure fold of one instance's events into a JSON
document, plus the writes that keep the document's indexes in step. The
runner (and the rebuild) turn those into ``project.lua`` calls."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import orjson

from engine.core.model import Event

from .keys import ViewKeys

Doc = Any
"""A projection's per-instance state: JSON-compatible (dicts, lists, strings, numbers)."""


class Applied:
    """One event as a projection sees it: the instance's version, the append time, the event."""

    __slots__ = ("event", "ts", "version")

    def __init__(self, version: int, ts: int, event: Event) -> None:
        self.version = version
        self.ts = ts
        self.event = event


def dumps(doc: Doc) -> bytes:
    """Canonical JSON: a view built live and one rebuilt are byte-equal."""
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)


class Ops:
    """The writes of one instance block, by key name (``project.lua`` ops)."""

    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: list[tuple[str, str, tuple[Any, ...]]] = []

    def hset(self, key: str, field: str, value: bytes | str) -> None:
        self.items.append(("H", key, (field, value)))

    def hdel(self, key: str, field: str) -> None:
        self.items.append(("h", key, (field,)))

    def zadd(self, key: str, score: int, member: str | bytes) -> None:
        self.items.append(("Z", key, (score, member)))

    def zrem(self, key: str, member: str | bytes) -> None:
        self.items.append(("z", key, (member,)))

    def rpush(self, key: str, value: bytes) -> None:
        self.items.append(("R", key, (value,)))

    def delete(self, key: str) -> None:
        self.items.append(("D", key, ()))


class Call:
    """One ``project.lua`` call: KEYS and ARGV built block by block."""

    __slots__ = ("_acks", "_blocks", "_index", "_unguarded", "blocks", "keys")

    def __init__(self, checkpoint: str, source: str) -> None:
        self.keys: list[str] = [checkpoint, source]
        self._index: dict[str, int] = {checkpoint: 1, source: 2}
        self._acks: list[str] = []
        self._unguarded: list[Any] = []
        self._blocks: list[Any] = []
        self.blocks: list[Any] = []  # the caller's tag for each guarded block, in order

    def ref(self, key: str) -> int:
        i = self._index.get(key)
        if i is None:
            self.keys.append(key)
            i = self._index[key] = len(self.keys)
        return i

    def _args(self, ops: Ops) -> list[Any]:
        out: list[Any] = []
        for op, key, rest in ops.items:
            out += (op, self.ref(key), *rest)
        return out

    def ack(self, entry_ids: Sequence[str]) -> None:
        self._acks += entry_ids

    def unguarded(self, ops: Ops, entry_ids: Sequence[str]) -> None:
        args = self._args(ops)
        self._unguarded += ("U", len(args), len(entry_ids), *args, *entry_ids)

    def guarded(self, tag: Any, view: str, expected: int, new: int, ops: Ops, entry_ids: Sequence[str]) -> None:
        args = self._args(ops)
        self._blocks += ("I", self.ref(view), expected, new, len(args), len(entry_ids), *args, *entry_ids)
        self.blocks.append(tag)

    @property
    def empty(self) -> bool:
        return not (self._acks or self._unguarded or self._blocks)

    def build(self, group: str, name: str) -> tuple[list[str], list[Any]]:
        return self.keys, [group, name, len(self._acks), *self._acks, *self._unguarded, *self._blocks]


class Projection:
    """One read model kept by one consumer group (``proj:<name>``) over the feeds."""

    name: ClassVar[str]

    def fold(self, doc: Doc, iid: str, item: Applied) -> Doc:
        """The document after one more event (``None`` before the first)."""
        raise NotImplementedError

    def writes(self, ops: Ops, vk: ViewKeys, p: int, iid: str, old: Doc, new: Doc,
               applied: Sequence[Applied], rebuild: bool) -> None:
        """Writes besides the document itself (indexes, lists). ``rebuild``: ``old``
        may be stale or wrong and ``applied`` is the instance's whole history."""

    def fold_all(self, doc: Doc, iid: str, applied: Sequence[Applied]) -> Doc:
        for item in applied:
            doc = self.fold(doc, iid, item)
        return doc
