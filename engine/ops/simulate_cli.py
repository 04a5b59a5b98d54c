"""`foldflow definitions test FILE --mocks MOCKS.json`: a test run of a definition on
the in-memory engine (engine.core.simulate). It reads no setting and touches no
Redis and no service. Exit 0 when the run completes, 1 when it ends any other way
(failed, compensated, cancelled, stalled, aborted), 2 when the input is wrong."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson

from engine.core.definition import load_definition_file
from engine.core.simulate import DEFAULT_INSTANCE_ID, DEFAULT_START_MS, Limits, MocksError, TestInputError, run_test
from engine.errors import InvalidInput


def add_test_command(dsub: Any) -> None:
    """The `test` verb under `definitions` (dsub: that verb's subparsers)."""
    x = dsub.add_parser("test", help="run a definition on an in-memory engine with mocked answers and events "
                                     "(no Redis, no services); exit 0 when it completes")
    x.add_argument("file", help="the definition (JSON or YAML, any accepted form)")
    x.add_argument("--mocks", help="the mocks document (JSON): steps' answers, events, signals")
    x.add_argument("--context", default="{}", help="the start input, a JSON object")
    x.add_argument("--correlation-id")
    x.add_argument("--history", action="store_true", help="also print every event of the run")
    x.add_argument("--name", help="name for a bare definition")
    x.add_argument("--version", help="version for a bare definition")
    x.add_argument("--start-ms", type=int, default=DEFAULT_START_MS, help="where the simulated clock starts")
    x.add_argument("--max-events", type=int, default=Limits().max_events, help="stop (aborted) after this many")
    x.set_defaults(fn=cmd_definitions_test)


async def cmd_definitions_test(args: argparse.Namespace) -> int:
    definition = load_definition_file(args.file, name=args.name, version=args.version)
    mocks = _read_json(args.mocks, "--mocks") if args.mocks else None
    context = _parse_json(args.context.encode(), "--context")
    if args.max_events < 1:
        raise InvalidInput("--max-events must be at least 1")
    try:
        result = run_test(definition, mocks, context=context, correlation_id=args.correlation_id,
                          start_ms=args.start_ms, limits=Limits(max_events=args.max_events),
                          instance_id=DEFAULT_INSTANCE_ID)
    except (MocksError, TestInputError) as exc:
        what = "mocks" if isinstance(exc, MocksError) else "input"
        print(f"foldflow: invalid {what} ({len(exc.problems)} problems):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem.path}: {problem.message}", file=sys.stderr)
        return 2
    if not args.history:
        result.pop("history")
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    if result["status"] != "completed" and result.get("reason"):
        print(f"foldflow: the run is {result['status']}: {result['reason']}", file=sys.stderr)
    return 0 if result["status"] == "completed" else 1


def _read_json(path: str, what: str) -> Any:
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise InvalidInput(f"{what} {path}: {exc.strerror or exc}") from None
    return _parse_json(raw, f"{what} {path}")


def _parse_json(raw: bytes, what: str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"{what} is not valid JSON: {exc}") from None
