"""The projections there are, by name (each one consumer group ``proj:<name>``)."""

from __future__ import annotations

from engine.errors import InvalidInput

from .base import Projection
from .correlation import Correlation
from .executions import Executions
from .lifecycle import Lifecycle
from .steps import Steps

PROJECTIONS: dict[str, Projection] = {p.name: p for p in (Executions(), Steps(), Lifecycle(), Correlation())}


def select(names: list[str] | None) -> list[Projection]:
    if not names:
        return list(PROJECTIONS.values())
    unknown = [n for n in names if n not in PROJECTIONS]
    if unknown:
        raise InvalidInput(f"unknown projection {', '.join(map(repr, unknown))}: one of {', '.join(PROJECTIONS)}")
    return [PROJECTIONS[n] for n in names]
