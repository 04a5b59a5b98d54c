"""One exception tree, sorted by who must act."""

from __future__ import annotations


class EngineError(Exception):
    """Base of every error foldflow raises on purpose."""


class ConfigError(EngineError):
    """The deployment is misconfigured (partition mismatch, bad setting): fix and restart."""


class StoreUnavailable(EngineError):
    """Redis did not answer: transient, back off and try again."""


class PoisonMessage(EngineError):
    """An entry that can never be processed: dead-letter it with this reason, never retry."""


class NotFound(EngineError):
    """The caller asked for an instance or definition that does not exist."""


class UnknownWorkflow(NotFound):
    pass


class UnknownInstance(NotFound):
    pass


class DefinitionConflict(EngineError):
    """The same (name, version) is already stored with a different body."""


class InvariantBroken(EngineError):
    """An invariant of the engine itself does not hold (a bug, or Redis answering out of contract):
    report it, never retry the same step blindly."""


class InvalidInput(EngineError):
    """A caller's argument is malformed (instance id, JSON, payload too large)."""


class InvalidContext(InvalidInput):
    """A start's context breaks its definition's input schema: well-formed, but not what the
    workflow takes (the HTTP API answers 422). ``problems`` lists each as "path: message"."""

    def __init__(self, message: str, problems: list[str]) -> None:
        super().__init__(message)
        self.problems = problems


class Refused(EngineError):
    """A well-formed request that the current state does not allow (resume of a completed
    instance, a start of a deactivated workflow); the message says why."""
