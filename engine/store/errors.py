"""The one place where a redis-py exception becomes foldflow's error tree.

Callers above the store see ``StoreUnavailable`` (back off, try again) and the
predicates below, never a redis-py class: ``TRANSIENT`` names what "Redis is
not answering right now" looks like, a cluster mid-failover included.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from redis.exceptions import ClusterDownError, MasterDownError, RedisError, ResponseError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from engine.errors import StoreUnavailable

TRANSIENT: tuple[type[Exception], ...] = (
    RedisConnectionError, RedisTimeoutError, OSError, ClusterDownError, TryAgainError, MasterDownError,
)
# The same, with StoreUnavailable, for loops that catch both a raw and a translated outage.
UNAVAILABLE: tuple[type[Exception], ...] = (StoreUnavailable, *TRANSIENT)
# A command Redis refused (NOGROUP, NOPERM, WRONGTYPE, BUSYGROUP, ...): a reply, not an outage.
REFUSED: tuple[type[Exception], ...] = (ResponseError,)
# Anything redis-py raises; for the CLI's last line of defence.
ANY_REDIS_ERROR: tuple[type[Exception], ...] = (RedisError,)

P = ParamSpec("P")
T = TypeVar("T")


def is_refused(exc: BaseException, *codes: str) -> bool:
    """Redis refused the command, with one of ``codes`` as its error prefix when any are given."""
    if not isinstance(exc, REFUSED) or isinstance(exc, TRANSIENT):
        return False
    return not codes or str(exc).startswith(codes)


def is_nogroup(exc: BaseException) -> bool:
    """NOGROUP, or a blocked read woken because its stream was deleted under it
    (Redis 7: "UNBLOCKED the stream key no longer exists")."""
    return isinstance(exc, REFUSED) and ("NOGROUP" in str(exc) or str(exc).startswith("UNBLOCKED"))


def unavailable(exc: BaseException) -> StoreUnavailable:
    return StoreUnavailable(f"Redis is unavailable: {type(exc).__name__}: {exc}")


def translated(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Wrap a coroutine function so a transient Redis error surfaces as StoreUnavailable."""

    @functools.wraps(fn)
    async def call(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except TRANSIENT as exc:
            raise unavailable(exc) from exc

    return call


def translate_methods(cls: type[T]) -> type[T]:
    """Class decorator: every public coroutine method translates transient Redis errors."""
    for name, member in list(vars(cls).items()):
        if not name.startswith("_") and inspect.iscoroutinefunction(member):
            setattr(cls, name, translated(member))
    return cls


