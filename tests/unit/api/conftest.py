"""The app in process over fakeredis, for fast tests of routes, problems and auth
(the e2e tier runs the same routes in a real `foldflow api` process)."""

from __future__ import annotations

from collections.abc import Iterator

import fakeredis
import pytest
from litestar.testing import TestClient

from engine.api.app import create_app
from engine.api.settings import ApiSettings
from engine.config import Settings


def app_client(settings: Settings, api: ApiSettings | None = None) -> TestClient:  # type: ignore[type-arg]
    server = fakeredis.FakeServer()
    app = create_app(settings, api or ApiSettings(),
                     redis_factory=lambda: fakeredis.FakeAsyncRedis(server=server))
    return TestClient(app)


@pytest.fixture
def client(fake_settings: Settings) -> Iterator[TestClient]:  # type: ignore[type-arg]
    with app_client(fake_settings) as c:
        yield c
