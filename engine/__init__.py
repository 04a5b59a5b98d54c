"""foldflow's write side: a durable workflow engine whose instances are
event-sourced actors on Redis Streams (streams.md is the wire contract).

The names below are imported on first use (PEP 562), so a role process imports only what it
runs: `import engine.ops.cli` no longer pulls in the HTTP executor, the client and the language
for every worker, which the tests start by the hundred."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    "Client": "engine.client",
    "ConfigError": "engine.errors",
    "Definition": "engine.core.definition",
    "DefinitionConflict": "engine.errors",
    "DefinitionError": "engine.core.definition",
    "EngineError": "engine.errors",
    "InvalidInput": "engine.errors",
    "InvariantBroken": "engine.errors",
    "NotFound": "engine.errors",
    "PoisonMessage": "engine.errors",
    "Refused": "engine.errors",
    "Registry": "engine.workers.activities",
    "Settings": "engine.config",
    "StepError": "engine.workers.handler_errors",
    "StoreUnavailable": "engine.errors",
    "Task": "engine.core.model",
    "UnknownInstance": "engine.errors",
    "UnknownWorkflow": "engine.errors",
    "activity": "engine.workers.activities",
    "decide": "engine.core.decide",
    "default_registry": "engine.workers.activities",
    "evolve": "engine.core.evolve",
    "fold": "engine.core.evolve",
    "from_env": "engine.config",
    "parse_definition": "engine.core.definition",
}

if TYPE_CHECKING:
    from engine.client import Client
    from engine.config import Settings, from_env
    from engine.core.decide import decide
    from engine.core.definition import Definition, DefinitionError, parse_definition
    from engine.core.evolve import evolve, fold
    from engine.core.model import Task
    from engine.errors import (
        ConfigError,
        DefinitionConflict,
        EngineError,
        InvalidInput,
        InvariantBroken,
        NotFound,
        PoisonMessage,
        Refused,
        StoreUnavailable,
        UnknownInstance,
        UnknownWorkflow,
    )
    from engine.workers.activities import Registry, activity, default_registry
    from engine.workers.handler_errors import StepError


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


__all__ = [
    "Client",
    "ConfigError",
    "Definition",
    "DefinitionConflict",
    "DefinitionError",
    "EngineError",
    "InvalidInput",
    "InvariantBroken",
    "NotFound",
    "PoisonMessage",
    "Refused",
    "Registry",
    "Settings",
    "StepError",
    "StoreUnavailable",
    "Task",
    "UnknownInstance",
    "UnknownWorkflow",
    "activity",
    "decide",
    "default_registry",
    "evolve",
    "fold",
    "from_env",
    "parse_definition",
]
