"""The web UI at /ui (docs/ui.md): its pages and assets, and the few routes it
needs that the API had not served yet (signals, workers, dead letters)."""

from __future__ import annotations

from typing import Any

from engine.api.ui import dlq_routes, pages, signal_routes, workers_routes

ROUTES: list[Any] = [*pages.ROUTES, *signal_routes.ROUTES, *workers_routes.ROUTES, *dlq_routes.ROUTES]
