"""`foldflow services limit NAME [--in-flight N] [--rate 100/1m] [--lease 30s] | --clear`
and `foldflow services limits [NAME]`: per-service limits across the cluster from the
command line (engine/store/limits.py; the API's `/services/{name}/limits` does the same).

`limit` sets the service's limits as given (a limit not given is lifted, as a PUT
does); `--clear` lifts them all. JSON on stdout; bad input exits 2 naming the
field, `--clear` of a service without limits exits 1.
"""

from __future__ import annotations

import argparse
from typing import Any

from engine.config import from_env
from engine.errors import InvalidInput, NotFound
from engine.runtime.lifecycle import setting_overrides
from engine.store.connection import Redis, connect
from engine.store.keys import Keys
from engine.store.limits import (
    InvalidLimits,
    LimitStore,
    check_service,
    limits_runner,
    limits_view,
    parse_limits,
    parse_rate_text,
)


async def describe(store: LimitStore, service: str) -> dict[str, Any]:
    limits = await store.get(service)
    usage = await store.usage(service, limits)
    return {"service": service, "limited": limits is not None and limits.active,
            **(limits_view(limits) if limits is not None else {"in_flight": None, "rate": None}),
            "usage": {"in_flight": usage.in_flight, "tokens": usage.tokens,
                      "waiting": usage.waiting_in_flight + usage.waiting_rate,
                      "waiting_in_flight": usage.waiting_in_flight, "waiting_rate": usage.waiting_rate}}


async def limits_shown(redis: Redis, keys: Keys, service: str) -> dict[str, Any] | None:
    """`services show`: a registered service's limits with their usage, or None."""
    store = LimitStore(limits_runner(redis), keys)
    return await describe(store, service) if await store.get(service) is not None else None


async def _limit(store: LimitStore, args: argparse.Namespace) -> dict[str, Any]:
    service = check_service(args.name)
    if args.clear:
        if args.in_flight is not None or args.rate is not None or args.lease is not None:
            raise InvalidInput("--clear lifts every limit: give it alone")
        if not await store.remove(service):
            raise NotFound(f"service {service!r} has no limits")
        return {"cleared": service}
    if args.in_flight is None and args.rate is None:
        raise InvalidInput("give --in-flight N and/or --rate LIMIT/PER (or --clear)")
    body: dict[str, Any] = {"in_flight": args.in_flight, "lease": args.lease,
                            "rate": None if args.rate is None else parse_rate_text(args.rate)}
    await store.put(service, parse_limits(body))
    return await describe(store, service)


async def _limits(store: LimitStore, args: argparse.Namespace) -> Any:
    if args.name:
        return await describe(store, check_service(args.name))
    return [await describe(store, name) for name in await store.all()]


async def run_limits(args: argparse.Namespace) -> Any:
    """The verb's JSON answer; InvalidInput for bad input (exit 2)."""
    settings = from_env(**setting_overrides(args))
    redis = connect(settings.redis_url)
    store = LimitStore(limits_runner(redis), Keys(settings.prefix, settings.partitions))
    try:
        return await (_limit if args.scmd == "limit" else _limits)(store, args)
    except InvalidLimits as exc:
        raise InvalidInput(str(exc)) from None
    finally:
        await redis.aclose()


def add_limit_commands(ssub: Any, conn: argparse.ArgumentParser, fn: Any) -> None:
    x = ssub.add_parser("limit", parents=[conn],
                        help="set a service's limits across the cluster (tasks in flight, rate), or --clear them")
    x.add_argument("name", help="the service (the queue its steps call), registered or not")
    x.add_argument("--in-flight", type=int, help="at most N of its tasks running at once, cluster-wide")
    x.add_argument("--rate", metavar="LIMIT/PER", help="at most LIMIT task starts per PER, e.g. 100/1m, 10/1s")
    x.add_argument("--lease", help="a permit outlives a worker that died holding it this long (default 30s)")
    x.add_argument("--clear", action="store_true", help="lift every limit of the service")
    x.set_defaults(fn=fn)
    x = ssub.add_parser("limits", parents=[conn], help="every limited service (or one), with live usage")
    x.add_argument("name", nargs="?", help="one service")
    x.set_defaults(fn=fn)
