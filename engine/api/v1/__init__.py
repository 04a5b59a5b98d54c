"""Seed 001's REST face under /api/v1: a second view over the same Client and Queries
(never a second engine or store), one module per resource; app.py mounts ROUTES
through engine/api/routes."""

from __future__ import annotations

from typing import Any

from engine.api.v1 import analytics, health, jobs, nodes, workflows

ROUTES: list[Any] = [*health.ROUTES, *workflows.ROUTES, *jobs.ROUTES, *nodes.ROUTES, *analytics.ROUTES]
# runs routes (engine/api/v1/runs.py, BRIDGE) are appended below this line.
from engine.api.v1 import runs  # noqa: E402 - appended after the others, as its comment asks

ROUTES += runs.ROUTES
