"""One running deployment (worker, projector, activities, API) per test module;
tests keep apart by their own workflow names, execution ids and correlation ids."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.api_stack import ApiStack


@pytest.fixture(scope="module")
def stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiStack]:
    logs: Path = tmp_path_factory.mktemp("api-stack")
    with ApiStack(redis_url, logs) as running:
        yield running


@pytest.fixture
def api(stack: ApiStack) -> str:
    return stack.url
