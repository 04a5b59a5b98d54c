"""Structured logs: one line per record as text, JSON or key=value.

Context travels as ``extra`` fields (``instance_id``, ``correlation_id``,
``workflow``, ``step``, ``attempt``, ``event``, ...), so a correlation id can be
followed across services with a grep or a log query::

    log.debug("transition", extra={"instance_id": iid, "correlation_id": cid, "step": "s", "attempt": 1})

A line also carries ``trace_id`` and ``span_id``: those of the current span when
tracing is on (engine.runtime.tracing), else of a ``traceparent`` in its extra (which
they replace); a line with neither is as it always was.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

from engine.runtime import tracing

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = frozenset(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {"message", "asctime", "taskName"}
# Context fields first, in this order, when present.
_ORDER = ("instance_id", "correlation_id", "workflow", "step", "attempt", "event", "status", "role", "consumer",
          "trace_id", "span_id")


def context_of(record: logging.LogRecord) -> dict[str, Any]:
    extra = {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}
    given = extra.pop("traceparent", None)
    # The current span's ids (tracing on), else those of the traceparent the record names.
    found = tracing.ids(given if isinstance(given, str) else None) if (tracing.enabled or given) else None
    if found is not None:
        extra["trace_id"], extra["span_id"] = found
    elif given is not None:
        extra["traceparent"] = given
    ordered = {k: extra.pop(k) for k in _ORDER if k in extra}
    ordered.update(sorted(extra.items()))
    return ordered


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """``{"ts": ..., "level": ..., "logger": ..., "msg": ..., <context>...}``"""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {"ts": _timestamp(record), "level": record.levelname, "logger": record.name,
                                "msg": record.getMessage()}
        for k, v in context_of(record).items():
            line.setdefault(k, v)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def _kv_value(value: Any) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value, default=str).decode()
    if text == "" or any(c in text for c in ' "=\n\t'):
        return orjson.dumps(text).decode()
    return text


class KvFormatter(logging.Formatter):
    """``ts=... level=INFO logger=foldflow.worker msg="..." instance_id=... step=...`` (logfmt)."""

    def format(self, record: logging.LogRecord) -> str:
        pairs: dict[str, Any] = {"ts": _timestamp(record), "level": record.levelname, "logger": record.name,
                                 "msg": record.getMessage()}
        for k, v in context_of(record).items():
            pairs.setdefault(k, v)
        if record.exc_info:
            pairs["exc"] = self.formatException(record.exc_info)
        return " ".join(f"{k}={_kv_value(v)}" for k, v in pairs.items())


class TextFormatter(logging.Formatter):
    """The human default: the classic line, then the context as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ctx = context_of(record)
        if ctx:
            head, sep, tail = line.partition("\n")  # keep a traceback below the context
            line = head + " " + " ".join(f"{k}={_kv_value(v)}" for k, v in ctx.items()) + sep + tail
        return line


FORMATTERS: dict[str, type[logging.Formatter]] = {"text": TextFormatter, "json": JsonFormatter, "kv": KvFormatter}


def configure_logging(level: str, fmt: str = "text", stream: TextIO | None = None) -> None:
    """Replace the root handlers with one that writes ``fmt`` lines to stderr."""
    handler = logging.StreamHandler(stream or sys.stderr)
    # An unknown format is reported by settings validation; log readably until then.
    handler.setFormatter(FORMATTERS.get(fmt, TextFormatter)())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())

LOG_FORMATS_ENV = "FOLDFLOW_LOG_FORMAT"
