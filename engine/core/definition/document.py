"""From text, bytes or a mapping to the plain JSON-like document the parser reads.

YAML aliases are refused: walking a few kilobytes of nested aliases can mean
visiting billions of nodes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import orjson
import yaml

from engine.core.definition.model import DefinitionError, Problem, canonical_json

MAX_DOCUMENT_BYTES: Final = 1 << 20


class _Loader(yaml.SafeLoader):
    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(None, None, "YAML aliases are not supported", mark)
        return super().compose_node(parent, index)


def document_of(source: str | bytes | Mapping[str, Any], *, fmt: str | None = None) -> dict[str, Any]:
    """The parsed document as stored; DefinitionError when it is not an object."""
    try:
        data = source if isinstance(source, bytes) else _serialize(source)
    except TypeError as exc:
        raise _document_error(f"not JSON-serializable: {exc}") from None
    if len(data) > MAX_DOCUMENT_BYTES:
        raise _document_error(f"{len(data)} bytes, larger than the {MAX_DOCUMENT_BYTES}-byte limit")
    if isinstance(source, Mapping):
        fmt = "json"  # the round trip above makes a plain copy the caller cannot mutate
    elif fmt is None:
        fmt = "json" if data.lstrip()[:1] in (b"{", b"[") else "yaml"
    doc = _decode(data, fmt)
    if not isinstance(doc, dict):
        raise _document_error(f"must be a JSON object or YAML mapping, got {type(doc).__name__}")
    try:
        canonical_json(doc)  # YAML can hold what JSON cannot (huge ints); storage needs JSON
    except TypeError as exc:
        raise _document_error(f"not representable as JSON: {exc}") from None
    return doc


def _serialize(source: str | Mapping[str, Any]) -> bytes:
    if isinstance(source, str):
        return source.encode("utf-8", "surrogatepass")
    return orjson.dumps(source, option=orjson.OPT_NON_STR_KEYS)


def _decode(data: bytes, fmt: str) -> Any:
    try:
        if fmt == "json":
            return orjson.loads(data)
        if fmt in ("yaml", "yml"):
            return yaml.load(data, Loader=_Loader)
    except orjson.JSONDecodeError as exc:
        raise _document_error(f"invalid JSON: {exc}") from None
    except yaml.YAMLError as exc:
        raise _document_error(f"invalid YAML: {exc}") from None
    except RecursionError:
        raise _document_error("nested too deeply") from None
    raise ValueError(f"unknown format {fmt!r} (json or yaml)")


def _document_error(message: str) -> DefinitionError:
    return DefinitionError([Problem("document", message)])
