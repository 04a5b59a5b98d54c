"""What the bridge does with one request: an execution request registers its plan
and starts the run under its run id; a cancellation request cancels it.

Idempotent by design, so that redelivery after a crash at any point is harmless:
registering the same plan again changes nothing (same name and version, same
document), the run record keeps the first request's fields (HSETNX), and a start
of an instance id that exists is ignored by the engine. A request that can never
succeed raises PoisonMessage with the reason it is dead-lettered with; a Redis
outage raises StoreUnavailable and the entry stays pending.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import orjson

from engine.bridge.messages import CancellationRequest, ExecutionRequest
from engine.client import Client
from engine.core.definition import DefinitionError
from engine.core.model import STATUS_NONE, TERMINAL
from engine.core.runs import iso
from engine.errors import DefinitionConflict, InvalidInput, PoisonMessage, UnknownWorkflow
from engine.store.runs import BRIDGE_SOURCE, RunStore

MAX_PROBLEMS = 10


def plan_identity(plan: dict[str, Any]) -> tuple[str | None, str | None]:
    """The name and version to register a plan under when it names none itself: derived
    from its content, so the same plan sent twice is one definition, two plans two."""
    digest = hashlib.sha256(orjson.dumps(plan, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
    named = any(plan.get(k) is not None for k in ("name", "workflow_id", "id"))
    return (None if named else f"plan-{digest}"), (None if plan.get("version") is not None else f"p{digest}")


def _problems(exc: DefinitionError) -> str:
    shown = "; ".join(f"{p.path}: {p.message}" for p in exc.problems[:MAX_PROBLEMS])
    more = len(exc.problems) - MAX_PROBLEMS
    return f"invalid workflow_plan: {shown}" + (f" (and {more} more)" if more > 0 else "")


class Intake:
    def __init__(self, client: Client, runs: RunStore, clock: Any = time.time) -> None:
        self.client, self.runs, self.clock = client, runs, clock

    def _now(self) -> str:
        return iso(int(self.clock() * 1000)) or ""

    async def execute(self, request: ExecutionRequest, entry_id: str) -> str:
        """Register, record, start; the instance id (the run id)."""
        name, version = plan_identity(request.plan)
        try:
            definition, _ = await self.client.register(request.plan, name=name, version=version)
        except DefinitionError as exc:
            raise PoisonMessage(_problems(exc)) from None
        except DefinitionConflict as exc:
            raise PoisonMessage(f"workflow_plan conflicts with a registered definition: {exc}") from None
        fields = {"run_id": request.run_id, "source": BRIDGE_SOURCE, "workflow": definition.name,
                  "workflow_version": definition.version, "triggered_by": request.triggered_by or "bridge",
                  "created_at": self._now(), "request_entry_id": entry_id}
        if request.timestamp:
            fields["requested_at"] = request.timestamp
        await self.runs.create(request.run_id, fields)
        try:
            return await self.client.start(definition.name, request.input_data, version=definition.version,
                                           instance_id=request.run_id)
        except (InvalidInput, UnknownWorkflow) as exc:  # InvalidContext is an InvalidInput
            reason = f"cannot start run {request.run_id}: {exc}"
            # The record is already there (it must precede the start): say why the run never began,
            # or /api/v1/runs would show it PENDING for ever.
            await self.runs.create(request.run_id, {"error_message": reason[:2000], "failed_at": self._now()})
            raise PoisonMessage(reason) from None

    async def cancel(self, request: CancellationRequest, entry_id: str, *, by: str = "bridge") -> bool:
        """Send the cancel; False when the run is already final (nothing sent, nothing recorded)."""
        record = await self.runs.get(request.run_id)
        status = (await self.client.state(request.run_id)).status
        if status == STATUS_NONE and not (record and record.get("source") == BRIDGE_SOURCE):
            raise PoisonMessage(f"no run {request.run_id!r} to cancel")
        if status in TERMINAL:
            return False
        # Sent even before the engine created the instance: the start is ahead of it in the inbox.
        data = {"reason": request.reason} if request.reason else {}
        await self.client.send("cancel", request.run_id, data, cmd_id=f"cancel:{entry_id}")
        await self.runs.record_cancel(request.run_id, request.cancelled_by or by, self._now(), request.reason)
        return True
