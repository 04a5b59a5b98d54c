"""The `foldflow` command line. Output is JSON; errors are one clear line on
stderr and a non-zero exit (2: the input is wrong, 1: not found or failed)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from engine.config import Settings, from_env
from engine.core.definition import DefinitionError, load_definition_file
from engine.errors import ConfigError, DefinitionConflict, EngineError, InvalidInput, NotFound, StoreUnavailable
from engine.runtime.lifecycle import (
    CONNECTION,
    LOG_LEVEL_HELP,
    SENDS,
    VERB_SETTINGS,
    add_setting_flags,
    setting_flags,
)
from engine.store.connection import connect, pool_size
from engine.store.errors import ANY_REDIS_ERROR


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()


def _load_json_arg(text: str, what: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"{what} is not valid JSON: {exc}") from None


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {k: getattr(args, k, None) for k in Settings.__struct_fields__}  # every setting has a flag
    return from_env(**overrides)


async def _with_client(args: argparse.Namespace, fn: Callable[[Any], Awaitable[int]]) -> int:
    from engine.client import Client

    settings = _settings(args)
    client = Client.from_url(settings.redis_url, settings)
    try:
        return await fn(client)
    finally:
        await client.close()


# -- verbs ------------------------------------------------------------------
async def cmd_register(args: argparse.Namespace) -> int:
    async def go(client: Any) -> int:
        with open(args.file, "rb") as fh:  # noqa: ASYNC230 - the definition file, read once before any await matters
            raw = fh.read()
        fmt = "yaml" if args.file.endswith((".yaml", ".yml")) else None
        definition, created = await client.register(raw, fmt=fmt, name=args.name, version=args.version)
        print(_json({"name": definition.name, "version": definition.version, "steps": len(definition.steps),
                     "created": created}))
        return 0

    # Validate before touching Redis: a bad file gets every problem even with no Redis at hand.
    load_definition_file(args.file, name=args.name, version=args.version)
    return await _with_client(args, go)


async def cmd_validate(args: argparse.Namespace) -> int:
    definition = load_definition_file(args.file, name=args.name, version=args.version)
    print(_json({"name": definition.name, "version": definition.version, "valid": True,
                 "steps": [s.name for s in definition.steps]}))
    return 0


def _priority(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 9:
        raise argparse.ArgumentTypeError(f"must be an integer 0-9 (higher is more urgent), got {text!r}")
    return value


async def cmd_start(args: argparse.Namespace) -> int:
    context = _load_json_arg(args.context, "--context")
    if not isinstance(context, dict):
        raise InvalidInput("--context must be a JSON object")

    async def go(client: Any) -> int:
        iid = await client.start(args.workflow, context, version=args.version, correlation_id=args.correlation_id,
                                 instance_id=args.id, priority=args.priority, tenant=args.tenant)
        print(iid)
        return 0

    return await _with_client(args, go)


async def cmd_status(args: argparse.Namespace) -> int:
    async def go(client: Any) -> int:
        print(_json(await client.status(args.id)))
        return 0

    return await _with_client(args, go)


async def cmd_history(args: argparse.Namespace) -> int:
    async def go(client: Any) -> int:
        print(_json(await client.history(args.id)))
        return 0

    return await _with_client(args, go)


async def cmd_control(args: argparse.Namespace) -> int:
    async def go(client: Any) -> int:
        kwargs: dict[str, Any] = {}
        if args.verb in ("cancel", "pause") and args.reason:
            kwargs["reason"] = args.reason
        if args.verb == "retry":
            kwargs["from_step"] = args.from_step
            if args.input is not None:
                if args.from_step is None:
                    raise InvalidInput("--input needs --from-step: the step the edited input is for")
                kwargs["input"] = _load_json_arg(args.input, "--input")
        entry = await getattr(client, args.verb)(args.id, **kwargs)
        print(_json({"id": args.id, "command": args.verb, "entry_id": entry}))
        return 0

    return await _with_client(args, go)


async def cmd_signal(args: argparse.Namespace) -> int:
    payload = _load_json_arg(args.payload, "--payload")

    async def go(client: Any) -> int:
        entry = await client.signal(args.id, args.name, payload)
        print(_json({"id": args.id, "command": "signal", "name": args.name, "entry_id": entry}))
        return 0

    return await _with_client(args, go)


async def cmd_definitions_list(args: argparse.Namespace) -> int:
    async def go(client: Any) -> int:
        print(_json(await client.definitions()))
        return 0

    return await _with_client(args, go)


async def cmd_definitions_show(args: argparse.Namespace) -> int:
    async def go(client: Any) -> int:
        definition = await client.definition(args.name, args.version)
        print(_json({"name": definition.name, "version": definition.version,
                     "versions": await client.store.definition_versions(definition.name),
                     "document": await client.definition_document(definition.name, definition.version)}))
        return 0

    return await _with_client(args, go)


async def cmd_publish(args: argparse.Namespace) -> int:
    data = _load_json_arg(args.data, "--data")
    if not isinstance(data, dict):
        raise InvalidInput("--data must be a JSON object")

    async def go(client: Any) -> int:
        published = await client.publish_event(args.type, data, correlation_id=args.correlation_id, event_id=args.id,
                                               source=args.source, timestamp=args.timestamp)
        print(_json({"type": args.type, "id": published.id, "entry_id": published.entry_id,
                     "duplicate": published.duplicate}))
        return 0

    return await _with_client(args, go)


async def _serve(make: Callable[[Any, Settings], Any], args: argparse.Namespace) -> int:
    from engine.runtime.lifecycle import serve

    settings = _settings(args)  # every problem with the settings, at start
    client = connect(settings.redis_url, max_connections=pool_size(settings.concurrency))
    try:
        # Metrics + health (FOLDFLOW_METRICS_PORT), heartbeat, graceful SIGTERM/SIGINT.
        return await serve(make(client, settings), client, settings)
    finally:
        await client.aclose()


async def cmd_worker(args: argparse.Namespace) -> int:
    from engine.workers.engine import EngineWorker

    return await _serve(lambda r, s: EngineWorker(r, s), args)


async def cmd_activities(args: argparse.Namespace) -> int:
    from engine.workers.activities import ActivityWorker, import_handlers

    sys.path.insert(0, os.getcwd())
    for module in args.module or ():
        import_handlers(module)
    if not args.http and not args.module and not args.code:
        raise ConfigError("activities needs --module (Python handlers), --http (the HTTP executor) or --code "
                          "(code nodes in a sandbox), or several of them")
    code = None
    if args.code:  # refused (exit 2) unless enabled and the sandbox's preflight holds
        from engine.workers.code.serving import code_serving

        code = await code_serving(_settings(args))

    def make(redis: Any, settings: Settings) -> ActivityWorker:
        serving = None
        if args.http:
            from engine.outbound.settings import http_settings
            from engine.workers.http.serving import HttpServing

            serving = HttpServing(redis, settings, http_settings())
        return ActivityWorker(redis, settings, services=args.service or None, http=serving, code=code)

    return await _serve(make, args)


async def cmd_bridge(args: argparse.Namespace) -> int:
    from engine.bridge.bridge import Bridge

    return await _serve(lambda r, s: Bridge(r, s), args)


async def cmd_demo(args: argparse.Namespace) -> int:
    from engine.dev.demo import run_demo

    return await run_demo(instances=args.instances, url=os.environ.get("REDIS_URL"), verbose=not args.quiet,
                          api_port=args.api_port if args.api else None)


# -- parser -----------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """Every setting flag goes before the verb, and those the verb reads also after it
    (engine.runtime.lifecycle.setting_flags: the value after the verb wins)."""
    p = argparse.ArgumentParser(prog="foldflow", description="Durable workflows on Redis Streams.")
    p.add_argument("--log-level", default=os.environ.get("FOLDFLOW_LOG_LEVEL"), help=LOG_LEVEL_HELP)
    add_setting_flags(p)
    sub = p.add_subparsers(dest="cmd", required=True)
    conn, sends = setting_flags(*CONNECTION), setting_flags(*SENDS)

    d = sub.add_parser("definitions", help="register or validate workflow definitions")
    dsub = d.add_subparsers(dest="dcmd", required=True)
    # validate reads no setting: it never touches Redis.
    for name, fn, parents in (("register", cmd_register, [conn]), ("validate", cmd_validate, [])):
        x = dsub.add_parser(name, parents=parents)
        x.add_argument("file")
        x.add_argument("--name", help="name for a bare definition")
        x.add_argument("--version", help="version for a bare definition")
        x.set_defaults(fn=fn)
    x = dsub.add_parser("list", parents=[conn], help="registered definitions and their versions")
    x.set_defaults(fn=cmd_definitions_list)
    x = dsub.add_parser("show", parents=[conn], help="one definition (the latest version unless --version)")
    x.add_argument("name")
    x.add_argument("--version")
    x.set_defaults(fn=cmd_definitions_show)
    from engine.ops.simulate_cli import add_test_command  # definitions test: the in-memory engine
    add_test_command(dsub)

    x = sub.add_parser("start", parents=[sends], help="start an instance; prints its id")
    x.add_argument("workflow")
    x.add_argument("--context", default="{}")
    x.add_argument("--version")
    x.add_argument("--correlation-id")
    x.add_argument("--id")
    x.add_argument("--priority", type=_priority, default=0,
                   help="0-9, higher is more urgent: orders queued starts of one concurrency key, and task lanes")
    x.add_argument("--tenant", help="whose start this is (a concurrency key may be {{ tenant }})")
    x.set_defaults(fn=cmd_start)

    for name, fn in (("status", cmd_status), ("history", cmd_history)):
        x = sub.add_parser(name, parents=[conn])
        x.add_argument("id")
        x.set_defaults(fn=fn)

    for verb in ("cancel", "pause", "resume", "retry"):
        x = sub.add_parser(verb, parents=[sends], help=f"{verb} an instance")
        x.add_argument("id")
        if verb in ("cancel", "pause"):
            x.add_argument("--reason")
        if verb == "retry":
            x.add_argument("--from-step", help="rewind to this step: it and everything after it run again")
            x.add_argument("--input", help="edited input (JSON) for --from-step, recorded in the history")
        x.set_defaults(fn=cmd_control, verb=verb)

    x = sub.add_parser("signal", parents=[sends], help="deliver a named payload to a running instance")
    x.add_argument("id")
    x.add_argument("name")
    x.add_argument("--payload", default="null", help="JSON")
    x.set_defaults(fn=cmd_signal)

    e = sub.add_parser("events", help="external events")
    esub = e.add_subparsers(dest="ecmd", required=True)
    x = esub.add_parser("publish", parents=[sends])
    x.add_argument("type")
    x.add_argument("--data", default="{}")
    x.add_argument("--correlation-id")
    x.add_argument("--id", help="the event's own id: published at most once (default: its entry id)")
    x.add_argument("--source", help="who publishes it (the envelope's source)")
    x.add_argument("--timestamp", help="when it happened, ISO-8601 (default: when it is added)")
    x.set_defaults(fn=cmd_publish)

    x = sub.add_parser("worker", parents=[setting_flags(*VERB_SETTINGS["worker"], log_level=True)],
                       help="run an engine worker (with the event router, outbox relay and timers)")
    x.set_defaults(fn=cmd_worker)

    x = sub.add_parser("activities", parents=[setting_flags(*VERB_SETTINGS["activities"], log_level=True)],
                       help="run an activity worker")
    x.add_argument("--module", action="append", help="module whose @activity handlers to serve")
    x.add_argument("--http", action="store_true",
                   help="also serve over HTTP every service that resolves through the service registry or "
                        "<SERVICE>_URL (and steps with their own url), while no handler serves it")
    x.add_argument("--code", action="store_true",
                   help="also run code nodes (service foldflow.code), each call in a fresh bubblewrap sandbox; "
                        "needs FOLDFLOW_CODE_NODES=sandbox (docs/code-nodes.md)")
    x.add_argument("--service", action="append", help="serve only these services")
    x.set_defaults(fn=cmd_activities)

    x = sub.add_parser("bridge", parents=[setting_flags(*VERB_SETTINGS["projector"], "max_deliveries",
                                                        "max_payload_bytes", log_level=True)],
                       help="run the seed 003 bridge: execution and cancellation requests in, monitoring updates out")
    x.set_defaults(fn=cmd_bridge)

    # The demo takes its Redis from REDIS_URL alone (or embeds one), so only logging applies.
    x = sub.add_parser("demo", parents=[setting_flags("log_format", log_level=True)],
                       help="run the agent-task-execution demo (embedded Redis when REDIS_URL is unset)")
    x.add_argument("--instances", type=int, default=5)
    x.add_argument("--quiet", action="store_true")
    x.add_argument("--api", action="store_true",
                   help="then serve the HTTP API on the demo's Redis (loopback, no auth) until Ctrl-C")
    x.add_argument("--api-port", type=int, default=8080, help="port of --api (default 8080)")
    x.set_defaults(fn=cmd_demo)
    from engine.ops.verbs import add_commands as add_ops_commands
    add_ops_commands(sub)
    from projections.cli import add_commands
    add_commands(sub)
    from engine.ops.dlq_cli import add_commands as add_dlq_commands
    add_dlq_commands(sub)
    from engine.ops.api_cli import add_commands as add_api_commands
    add_api_commands(sub)
    from engine.ops.services_cli import add_commands as add_services_commands
    add_services_commands(sub)
    from engine.ops.schedules_cli import add_commands as add_schedules_commands
    add_schedules_commands(sub)
    from engine.ops.batches_cli import add_commands as add_batches_commands
    add_batches_commands(sub)
    from engine.ops.admission_cli import add_commands as add_admission_commands
    add_admission_commands(sub)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """build_parser().parse_args, but a flag the verb does not take is refused with
    that verb's usage rather than the top level's, which lists every setting."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        _verb_parser(parser, args).error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _verb_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The innermost sub-parser args went through (`projector status`, `dlq list`)."""
    while parser._subparsers is not None:
        chosen = next(a for a in parser._subparsers._group_actions if isinstance(a, argparse._SubParsersAction))
        name = getattr(args, chosen.dest, None)
        if name is None:
            break
        parser = chosen._name_parser_map[name]
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    level = args.log_level or ("WARNING" if args.cmd == "demo" else "INFO")
    from engine.ops.logs import LOG_FORMATS_ENV, configure_logging

    configure_logging(level, getattr(args, "log_format", None) or os.environ.get(LOG_FORMATS_ENV) or "text")
    try:
        import uvloop

        runner: Callable[[Any], Any] = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency, but not on every platform
        runner = asyncio.run
    try:
        return int(runner(args.fn(args)))
    except DefinitionError as exc:
        print(f"foldflow: invalid definition ({len(exc.problems)} problems):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem.path}: {problem.message}", file=sys.stderr)
        return 2
    except (InvalidInput, ConfigError, DefinitionConflict) as exc:
        print(f"foldflow: {exc}", file=sys.stderr)
        return 2
    except NotFound as exc:
        print(f"foldflow: not found: {exc}", file=sys.stderr)
        return 1
    except (StoreUnavailable, EngineError, OSError) as exc:
        print(f"foldflow: {exc}", file=sys.stderr)
        return 1
    except ANY_REDIS_ERROR as exc:
        print(f"foldflow: Redis error ({from_env().redis_url}): {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
