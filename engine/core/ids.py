"""Identity rules of the pure core: which instance ids and queue names are
valid, how stream entry ids order, and how a wait's filter values are digested.
They live here, not in store/keys.py, because decide and evolve need them and
the core imports nothing of the Redis boundary."""

from __future__ import annotations

import hashlib
import re
import zlib
from typing import Any

import orjson

# Instance ids travel inside key names and newline-separated timer members, so
# they are restricted to a safe alphabet (streams.md, "Instance ids").
INSTANCE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@+-]{0,199}$")
QUEUE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@/+-]{0,199}$")
# A task of an instance with priority n > 0 goes to its queue's lane ``<queue stream>:p<n>``
# (engine.store.keys.Keys.tasks): a queue (a step's service) may not end like that itself.
LANE_SUFFIX_RE = re.compile(r":p([1-9])$")
# W3C trace context, version 00 (https://www.w3.org/TR/trace-context/#traceparent-header).
TRACEPARENT_RE = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")


def traceparent_problem(value: str) -> str | None:
    """Why ``value`` is not a traceparent foldflow passes on; None when it is one."""
    match = TRACEPARENT_RE.match(value)
    if match is None:
        return (f"invalid traceparent {value[:100]!r}: expected 00-<32 hex>-<16 hex>-<2 hex> "
                "(lowercase, W3C trace context)")
    if set(match[1]) == {"0"} or set(match[2]) == {"0"}:
        return f"invalid traceparent {value!r}: an all-zero trace id or parent id is not allowed"
    return None


def entry_key(entry_id: str) -> tuple[int, int]:
    """A stream entry id as (ms, seq), so ids compare in stream order; (0, 0) when malformed."""
    ms, _, seq = entry_id.partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        return (0, 0)


def partition_of(instance_id: str, partitions: int) -> int:
    return zlib.crc32(instance_id.encode("utf-8")) % partitions


def filter_shape(filter_: dict[str, Any]) -> tuple[str, ...]:
    return tuple(sorted(filter_))


def encode_shape(shape: tuple[str, ...]) -> str:
    return orjson.dumps(list(shape)).decode()


def wait_signature(event_type: str, filter_: dict[str, Any]) -> str:
    """Names what a wait waits for: its event type and filter values."""
    shape = filter_shape(filter_)
    return f"{event_type}:{filter_digest(shape, [filter_[k] for k in shape])}"


def filter_digest(shape: tuple[str, ...], values: list[Any]) -> str:
    """Digest of the filter values in shape order; equal JSON values, equal digest."""
    return hashlib.sha1(orjson.dumps([list(shape), values], option=orjson.OPT_SORT_KEYS)).hexdigest()
