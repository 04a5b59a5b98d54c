"""`foldflow services register|list|show|remove|check`: the service registry from
the command line (engine/store/services.py; the API's `/services` does the same).

JSON on stdout. Errors go through engine.ops.cli's handling: a bad record exits 2
naming each field, an unknown service exits 1, and `check` exits 1 when no
instance passes.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import orjson

from engine.config import from_env
from engine.errors import InvalidInput, NotFound
from engine.runtime.lifecycle import CONNECTION, setting_flags, setting_overrides
from engine.store.connection import connect
from engine.store.keys import Keys
from engine.store.services import ServiceRecord, ServiceRegistry, aggregate


def _json(value: Any) -> str:
    return orjson.dumps(msgspec.to_builtins(value), option=orjson.OPT_INDENT_2).decode()


async def _with_registry(args: argparse.Namespace, fn: Callable[[ServiceRegistry], Awaitable[int]]) -> int:
    settings = from_env(**setting_overrides(args))
    redis = connect(settings.redis_url)
    try:
        return await fn(ServiceRegistry(redis, Keys(settings.prefix, settings.partitions)))
    finally:
        await redis.aclose()


def _pairs(items: list[str] | None, flag: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidInput(f"{flag} {item!r}: expected NAME=VALUE")
        out[key.strip()] = value
    return out


def register_body(args: argparse.Namespace) -> dict[str, Any]:
    health: dict[str, Any] = {"path": args.health}
    for key, value in (("interval", args.interval), ("timeout", args.health_timeout),
                       ("failures_before_critical", args.failures)):
        if value is not None:
            health[key] = value
    body: dict[str, Any] = {"name": args.name, "instances": [{"url": u, "weight": args.weight} for u in args.urls],
                            "health": health, "headers": _pairs(args.header, "--header"), "tags": args.tag or [],
                            "metadata": _pairs(args.meta, "--meta")}
    if args.timeout is not None:
        body["timeout"] = args.timeout
    return body


async def _found(registry: ServiceRegistry, name: str) -> ServiceRecord:
    record = await registry.get(name)
    if record is None:
        raise NotFound(f"no service {name!r} is registered")
    return record


async def _register(registry: ServiceRegistry, args: argparse.Namespace) -> int:
    body = register_body(args)
    existing = await registry.get(args.name)
    if existing is None:
        record, action = await registry.register(body), "registered"
    else:
        record, action = await registry.update(existing.id, body), "updated (the name was registered)"
    print(_json({"action": action, "service": record}))
    return 0


async def _list(registry: ServiceRegistry, args: argparse.Namespace) -> int:
    rows = []
    for record in await registry.all():
        checks = await registry.checks(record.id)
        rows.append({"id": record.id, "name": record.name, "instances": [i.url for i in record.instances],
                     "tags": record.tags,
                     "status": aggregate([checks[i.url] for i in record.instances if i.url in checks])})
    print(_json(rows))
    return 0


async def _show(registry: ServiceRegistry, args: argparse.Namespace) -> int:
    from engine.ops.limits_cli import limits_shown

    record = await _found(registry, args.name)
    print(_json({"service": record, "checks": await registry.checks(record.id),
                 "limits": await limits_shown(registry.redis, registry.keys, record.name)}))
    return 0


async def _remove(registry: ServiceRegistry, args: argparse.Namespace) -> int:
    if not await registry.remove(args.name):
        raise NotFound(f"no service {args.name!r} is registered")
    print(_json({"removed": args.name}))
    return 0


async def _check(registry: ServiceRegistry, args: argparse.Namespace) -> int:
    from engine.outbound.health import check_service, checking_session
    from engine.outbound.safety import AddressPolicy
    from engine.outbound.settings import http_settings

    record = await _found(registry, args.name)
    policy = AddressPolicy(*http_settings().networks())
    async with checking_session(policy) as session:
        checks = await check_service(session, registry, record, int(time.time() * 1000), policy=policy)
    ordered = [checks[i.url] for i in record.instances]
    print(_json({"name": record.name, "status": aggregate(ordered), "checks": ordered}))
    return 0 if any(c.status == "passing" for c in ordered) else 1


VERBS: dict[str, Callable[[ServiceRegistry, argparse.Namespace], Awaitable[int]]] = {
    "register": _register, "list": _list, "show": _show, "remove": _remove, "check": _check}


async def cmd_services(args: argparse.Namespace) -> int:
    return await _with_registry(args, lambda registry: VERBS[args.scmd](registry, args))


async def cmd_limits(args: argparse.Namespace) -> int:
    from engine.ops.limits_cli import run_limits

    print(_json(await run_limits(args)))
    return 0


def add_commands(sub: Any) -> None:
    s = sub.add_parser("services", help="the service registry: register, list, show, remove, check; limit, limits")
    ssub = s.add_subparsers(dest="scmd", required=True)
    conn = setting_flags(*CONNECTION)

    x = ssub.add_parser("register", parents=[conn],
                        help="register a service (or update it, when the name is registered)")
    x.add_argument("name", help="the name steps call it by (a-z 0-9 . _ -)")
    x.add_argument("urls", nargs="+", metavar="URL", help="each instance's base URL (http or https)")
    x.add_argument("--health", default="/health", help="health check path (default /health)")
    x.add_argument("--interval", help="between health checks, e.g. 10s (default 10s)")
    x.add_argument("--health-timeout", help="of one health check, e.g. 2s (default 2s)")
    x.add_argument("--failures", type=int, help="failed checks in a row before an instance is critical (default 3)")
    x.add_argument("--timeout", help="default timeout of calls to the service, e.g. 5s")
    x.add_argument("--header", action="append", metavar="NAME=VALUE",
                   help="sent with every call; the value may be {{ secrets.NAME }} (repeatable)")
    x.add_argument("--tag", action="append", help="repeatable")
    x.add_argument("--meta", action="append", metavar="KEY=VALUE", help="metadata (repeatable)")
    x.add_argument("--weight", type=int, default=1, help="weight of each instance given (default 1)")
    x.set_defaults(fn=cmd_services)

    x = ssub.add_parser("list", parents=[conn], help="every service, with its instances' status")
    x.set_defaults(fn=cmd_services)
    for verb, what in (("show", "one service's record and its instances' last checks"),
                       ("remove", "remove a service"),
                       ("check", "check every instance now; exit 1 when none passes")):
        x = ssub.add_parser(verb, parents=[conn], help=what)
        x.add_argument("name", help="the service's name or id")
        x.set_defaults(fn=cmd_services)
    from engine.ops.limits_cli import add_limit_commands

    add_limit_commands(ssub, conn, cmd_limits)  # per-service limits across the cluster (issue 16)
