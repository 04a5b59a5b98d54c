"""The ceiling of `python -m bench.api`: a bare endpoint on the API's own stack
(Litestar on uvicorn with uvloop and httptools, a msgspec body, the same
redis-py client foldflow opens) that does one XADD per request and nothing
else: no definition lookup, no auth guard, no metrics middleware, no wait for
the engine. POST /executions through the API is measured against it in the
same run.

    python -m bench.api_ceiling --port 8099 --redis-url redis://127.0.0.1:6379/0 --prefix ceil
"""

from __future__ import annotations

import argparse
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import uvicorn
import uvloop
from litestar import Litestar, post
from litestar.params import JSONBody

from engine.store.connection import Redis, connect
from engine.store.keys import Keys


class StartBody(msgspec.Struct, forbid_unknown_fields=True):
    workflow_id: str
    context: dict[str, Any] = {}
    correlation_id: str | None = None


class Started(msgspec.Struct):
    execution_id: str
    workflow_id: str
    status: str
    entry: str


def ceiling_app(redis_url: str, prefix: str, partitions: int = 8) -> Litestar:
    """The bare endpoint; its stream is under `prefix`, which no worker reads."""
    keys = Keys(prefix, partitions)
    clients: dict[str, Redis] = {}

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        clients["redis"] = connect(redis_url)
        try:
            yield
        finally:
            await clients["redis"].aclose()

    @post("/executions", status_code=200, sync_to_thread=False)
    async def start(data: JSONBody[StartBody]) -> Started:
        iid = uuid.uuid4().hex
        fields = {"type": "start", "id": iid, "data": msgspec.json.encode({"workflow": data.workflow_id,
                                                                            "context": data.context})}
        entry = await clients["redis"].xadd(keys.inbox(keys.partition(iid)), fields)  # type: ignore[arg-type]
        return Started(execution_id=iid, workflow_id=data.workflow_id, status="pending",
                       entry=entry.decode() if isinstance(entry, bytes) else str(entry))

    return Litestar(route_handlers=[start], lifespan=[lifespan], debug=False, openapi_config=None)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.api_ceiling", description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--redis-url", required=True)
    ap.add_argument("--prefix", required=True)
    args = ap.parse_args(argv)
    # the same server options as engine/api/server.py's uvicorn_config, so only the app differs
    config = uvicorn.Config(ceiling_app(args.redis_url, args.prefix), host="127.0.0.1", port=args.port, loop="none",
                            http="httptools", lifespan="on", access_log=False, log_config=None, server_header=False)
    uvloop.run(uvicorn.Server(config).serve())


if __name__ == "__main__":
    main()
