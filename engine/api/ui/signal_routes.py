"""POST /executions/{execution_id}/signal: a named payload for a running or paused
execution (the CLI's `foldflow signal`), answered as the other controls are: 200
once the engine recorded it, 202 when it did not within wait_ms, 409 when the
execution's status refuses it."""

from __future__ import annotations

import uuid
from typing import Any

from litestar import Response, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody

from engine.api.executions.reads import Reads
from engine.api.problems import Problem, problems
from engine.api.routes.executions import ExecutionIdParam, WaitMs
from engine.api.services import Services
from engine.api.ui.models import SignalRequest, SignalResult
from engine.core.model import STATUS_NONE, STATUS_PAUSED, STATUS_RUNNING, CommandRejected

ACCEPTS = frozenset({STATUS_RUNNING, STATUS_PAUSED})


@post("/executions/{execution_id:str}/signal", status_code=200, operation_id="signalExecution",
      tags=["executions"], summary="Send a named signal (templates read it as signals.<name>)",
      responses={202: ResponseSpec(SignalResult, description="Sent, not applied within wait_ms",
                                   generate_examples=False), **problems(400, 404, 409)})
async def signal_execution(services: NamedDependency[Services], execution_id: ExecutionIdParam,
                           data: JSONBody[SignalRequest], wait_ms: WaitMs = None) -> Response[SignalResult]:
    reads = Reads(services)
    folded = await reads.current(execution_id)
    status = folded.state.status
    if status == STATUS_NONE:
        await services.queries.execution(execution_id)  # 404 when unknown
        status = "retired"
    if status not in ACCEPTS:
        raise Problem(409, f"cannot signal an execution that is {status} (accepted when running or paused)")
    cmd_id = f"signal:{uuid.uuid4().hex}"
    await services.client.signal(execution_id, data.name, data.payload, cmd_id=cmd_id)
    seen = await reads.wait(execution_id, folded.last_id, lambda s: any(e.cmd == cmd_id for _, e, _ in s),
                            services.api.start_wait_ms if wait_ms is None else wait_ms)
    mine = [e for _, e, _ in seen if e.cmd == cmd_id]
    rejected = next((e for e in mine if isinstance(e, CommandRejected)), None)
    if rejected is not None:
        raise Problem(409, rejected.reason)
    after = folded.extend(seen).state.status if mine else status
    return Response(SignalResult(execution_id=execution_id, name=data.name, command_id=cmd_id,
                                 applied=bool(mine), status=after), status_code=200 if mine else 202)


ROUTES: list[Any] = [signal_execution]
