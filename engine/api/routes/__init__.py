"""Every route of the API, one module per resource; app.py mounts ROUTES."""

from __future__ import annotations

from typing import Any

from engine.api.routes import (
    batches,
    events,
    executions,
    health,
    limits,
    live,
    schedules,
    services,
    steps,
    testing,
    workflows,
)
from engine.api.ui import ROUTES as UI_ROUTES  # the web UI and the routes it adds (after the above: it uses them)
from engine.api.v1 import ROUTES as V1_ROUTES  # seed 001's /api/v1 face (issue 14)

ROUTES: list[Any] = [*health.ROUTES, *workflows.ROUTES, *steps.ROUTES, *executions.ROUTES, *events.ROUTES,
                     *live.ROUTES, *services.ROUTES]
ROUTES += UI_ROUTES
ROUTES += testing.ROUTES  # test runs on the in-memory engine (issue 14, seed 004)
ROUTES += V1_ROUTES
ROUTES += schedules.ROUTES + batches.ROUTES + limits.ROUTES  # issue 16
