"""What every route reaches the deployment through: one Client (commands,
definitions, instance streams), one Queries (the read models) and the settings.
Built once per process in the app's lifespan and handed to routes by
dependency injection as ``services``; the API keeps no other state, so any
number of processes serve one deployment."""

from __future__ import annotations

from dataclasses import dataclass

from engine.api.settings import ApiSettings
from engine.client import Client
from engine.config import Settings
from engine.store.connection import Redis
from projections.queries import Queries


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    api: ApiSettings
    redis: Redis
    client: Client
    queries: Queries
    blocking: Redis
    """For blocking reads only (XREAD BLOCK: live streams, the waits of starts and controls):
    a pool of its own, so parked reads never take the connections other requests need."""

    @classmethod
    def over(cls, redis: Redis, settings: Settings, api: ApiSettings, *, blocking: Redis | None = None) -> Services:
        return cls(settings=settings, api=api, redis=redis, blocking=blocking or redis,
                   client=Client(redis, settings), queries=Queries(redis, settings))
