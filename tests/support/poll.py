"""The one way tests wait: poll a condition until it holds (never a fixed sleep).

``await eventually(check)`` calls ``check()`` (sync or async) every ``interval`` seconds
until ``ok(value)`` (truthy by default) and returns that value; past ``timeout`` it raises
AssertionError naming ``what`` and the last value. The timeout only stops a hang: it is no
claim about speed. Exceptions listed in ``retry_on`` count as "not yet". Sync tests wrap it
in ``run(...)``.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


async def eventually(check: Callable[[], Any], timeout: float = 20.0, what: str = "condition", *,
                     interval: float = 0.05, ok: Callable[[Any], bool] = bool,
                     retry_on: tuple[type[BaseException], ...] = ()) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
            if inspect.isawaitable(last):
                last = await last
        except retry_on as exc:
            if time.monotonic() >= deadline:
                raise
            last = exc
        else:
            if ok(last):
                return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")
        await asyncio.sleep(interval)


def wait_for(check: Callable[[], Any], timeout: float = 20.0, what: str = "condition", *,
             interval: float = 0.05, ok: Callable[[Any], bool] = bool,
             retry_on: tuple[type[BaseException], ...] = ()) -> Any:
    """``eventually`` for sync code (outside an event loop): the same loop, run to its end."""
    return run(eventually(check, timeout, what, interval=interval, ok=ok, retry_on=retry_on))
