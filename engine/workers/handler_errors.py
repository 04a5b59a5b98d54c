"""What a handler's failure becomes: the step error recorded in the step, the
history and the log, with the exception's type, message and the handler's own
line, so that a KeyError reads ``KeyError: 'warehouse_code' (at shop/handlers.py:42
in reserve)`` and not a bare ``'warehouse_code'``."""

from __future__ import annotations

import inspect
import os
import sys
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from engine.core.model import Task

Handler = Callable[[Task], Any | Awaitable[Any]]


class StepError(Exception):
    """Raise from a handler to fail the attempt; retryable=False stops retries."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable


# The error lands in the step, the history and the log; bounded so that a huge message
# cannot push the result over FOLDFLOW_MAX_PAYLOAD_BYTES, which would replace it by a
# non-retryable "result is N bytes" failure and lose both the message and the retry.
MAX_ERROR_CHARS = 2000
_FOLDFLOW = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # engine/


def handler_error(exc: Exception, handler: Handler) -> dict[str, Any]:
    """The step error for an exception a handler raised.

    A StepError's message is the handler's own words and stays as is (its type names a
    subclass, if one was raised). Anything else is a bug or an outage the handler did not
    expect: a bare ``str(exc)`` (``'warehouse_code'`` for a KeyError) says neither what
    went wrong nor where, so it reads ``KeyError: 'warehouse_code' (at shop/handlers.py:42
    in reserve)``.
    """
    if isinstance(exc, StepError):
        return {"message": _clip(exc.message, MAX_ERROR_CHARS), "retryable": exc.retryable, "kind": "handler",
                "type": type(exc).__name__}
    try:
        text = str(exc)
    except Exception:  # a broken __str__ must not turn the failure into a crash of the worker
        text = "<unprintable>"
    head = f"{_qualified(type(exc))}: {text}" if text else _qualified(type(exc))
    where = _where(exc, handler)
    suffix = f" (at {where})" if where else ""
    message = _clip(_clip(head, MAX_ERROR_CHARS - len(suffix)) + suffix, MAX_ERROR_CHARS)
    return {"message": message, "retryable": True, "kind": "handler", "type": type(exc).__name__}


def _qualified(cls: type) -> str:
    """As tracebacks print it: builtins bare, anything else with its module."""
    return cls.__qualname__ if cls.__module__ in ("builtins", "__main__") else f"{cls.__module__}.{cls.__qualname__}"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"


def _where(exc: BaseException, handler: Handler) -> str | None:
    """``file:line in function`` of the innermost frame of the handler's own code: in its
    package when that is known (not a library it called into), else anywhere but foldflow."""
    frames = traceback.extract_tb(exc.__traceback__)
    homes = _homes(handler)
    own = [f for f in frames if _under(f.filename, homes)] or [f for f in frames if not _under(f.filename, (_FOLDFLOW,))]
    if not own:
        return None
    frame = own[-1]
    return f"{_shown(frame.filename)}:{frame.lineno} in {frame.name}"


def _homes(handler: Handler) -> tuple[str, ...]:
    """Where the handler's top-level package (or lone module) lives."""
    try:
        fn: Any = inspect.unwrap(handler)
    except ValueError:  # a cycle of __wrapped__
        fn = handler
    fn = getattr(fn, "func", fn)  # functools.partial
    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    top = sys.modules.get(module.__name__.partition(".")[0]) if module is not None else None
    if top is None:
        return ()
    if hasattr(top, "__path__"):
        return tuple(os.path.abspath(p) for p in top.__path__)
    file = getattr(top, "__file__", None)
    return (os.path.abspath(file),) if file else ()


def _under(filename: str, roots: tuple[str, ...]) -> bool:
    path = os.path.abspath(filename)
    return any(path == root or path.startswith(root + os.sep) for root in roots)


def _shown(filename: str) -> str:
    """The path as imported (``shop/handlers.py``): relative to the sys.path entry it is under."""
    path = os.path.abspath(filename)
    best = filename
    for entry in sys.path:
        try:
            rel = os.path.relpath(path, os.path.abspath(entry or os.curdir))
        except ValueError:  # another drive (Windows)
            continue
        if not rel.startswith(os.pardir) and len(rel) < len(best):
            best = rel
    return best
