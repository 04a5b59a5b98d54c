"""Every route of the API, one module per resource; app.py mounts ROUTES."""

from __future__ import annotations

from typing import Any

from engine.api.routes import events, executions, health, live, services, steps, workflows

ROUTES: list[Any] = [*health.ROUTES, *workflows.ROUTES, *steps.ROUTES, *executions.ROUTES, *events.ROUTES,
                     *live.ROUTES, *services.ROUTES]
