"""foldflow's write side: a durable workflow engine whose instances are
event-sourced actors on Redis Streams (streams.md is the wire contract)."""

from .activities import Registry, StepError, activity, default_registry
from .client import Client
from .config import Settings, from_env
from .decider import decide
from .definition import Definition, DefinitionError, parse_definition
from .errors import (
    ConfigError,
    DefinitionConflict,
    EngineError,
    InvalidInput,
    NotFound,
    PoisonMessage,
    StoreUnavailable,
    UnknownInstance,
    UnknownWorkflow,
)
from .evolve import evolve, fold
from .model import Task

__all__ = [
    "Client",
    "ConfigError",
    "Definition",
    "DefinitionConflict",
    "DefinitionError",
    "EngineError",
    "InvalidInput",
    "NotFound",
    "PoisonMessage",
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
