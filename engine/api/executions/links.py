"""OpenAPI links from a start's answer to the routes of the execution it names,
so that stateful fuzzing (schemathesis) and generated clients can follow
`execution_id` from POST /executions into GET /executions/{execution_id} and
its sub-routes. Litestar has no `links=` on a route; its `operation_class`
hook builds each operation, and this one adds the links to 200 and 202."""

from __future__ import annotations

from dataclasses import dataclass

from litestar.openapi.spec import Link, OpenAPIResponse, Operation

# operation_id of each route a started execution links to (set on those routes).
FOLLOWS = {
    "GetExecution": "getExecution",
    "GetExecutionState": "getExecutionState",
    "GetExecutionHistory": "getExecutionHistory",
    "GetExecutionSteps": "getExecutionSteps",
    "PauseExecution": "pauseExecution",
    "ResumeExecution": "resumeExecution",
    "CancelExecution": "cancelExecution",
}


def execution_links() -> dict[str, Link | object]:
    return {name: Link(operation_id=op, parameters={"execution_id": "$response.body#/execution_id"},
                       description=f"{op} of the execution this answer names")
            for name, op in FOLLOWS.items()}


@dataclass
class StartOperation(Operation):
    def __post_init__(self) -> None:
        for code in ("200", "202"):
            response = (self.responses or {}).get(code)
            if isinstance(response, OpenAPIResponse):
                response.links = {**(response.links or {}), **execution_links()}  # type: ignore[dict-item]
