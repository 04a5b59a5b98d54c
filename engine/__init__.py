"""foldflow's write side: a durable workflow engine whose instances are
event-sourced actors on Redis Streams (streams.md is the wire contract)."""

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
