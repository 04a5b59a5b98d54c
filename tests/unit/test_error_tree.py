"""One error tree and one Redis boundary: callers see foldflow's classes, never redis-py's."""

from __future__ import annotations

import asyncio
import socket

import pytest

import engine
from engine.core.codec import MAX_TYPE_CHARS, check_length
from engine.core.language.condition_parser import ConditionError
from engine.core.language.templates import TemplateError
from engine.errors import ConfigError, EngineError, InvalidInput, PoisonMessage, StoreUnavailable
from engine.store.errors import TRANSIENT, is_nogroup, is_refused, translate_methods
from engine.store.keys import Keys


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the with block ends


@pytest.mark.parametrize("cls", [engine.DefinitionError, TemplateError, ConditionError])
def test_definition_language_errors_are_engine_errors_and_still_value_errors(cls: type[Exception]) -> None:
    assert issubclass(cls, EngineError)
    assert issubclass(cls, ValueError)  # the public API promised ValueError before the tree did


def test_a_partition_count_below_one_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="partitions must be >= 1, got 0"):
        Keys("ff", 0)


def test_one_length_check_raises_what_the_caller_must_act_on() -> None:
    check_length("type", "t" * MAX_TYPE_CHARS, MAX_TYPE_CHARS)
    with pytest.raises(PoisonMessage, match="field 'type' is 201 characters, over the limit of 200"):
        check_length("type", "t" * 201, MAX_TYPE_CHARS)
    with pytest.raises(InvalidInput, match="field 'type' is 201 characters, over the limit of 200"):
        check_length("type", "t" * 201, MAX_TYPE_CHARS, InvalidInput)


def test_client_against_a_redis_that_does_not_answer_raises_store_unavailable() -> None:
    async def scenario() -> None:
        client = engine.Client.from_url(f"redis://127.0.0.1:{_closed_port()}/0")
        try:
            with pytest.raises(StoreUnavailable, match="Redis is unavailable: ConnectionError"):
                await client.start("any", {})
            with pytest.raises(StoreUnavailable):
                await client.publish("some.event", {})
            with pytest.raises(StoreUnavailable):
                await client.status("i-1")
        finally:
            await client.close()

    asyncio.run(scenario())


def test_translate_methods_wraps_public_coroutines_only() -> None:
    @translate_methods
    class Thing:
        async def call(self) -> None:
            raise TRANSIENT[0]("down")

        async def _private(self) -> None:
            raise TRANSIENT[0]("down")

    with pytest.raises(StoreUnavailable):
        asyncio.run(Thing().call())
    with pytest.raises(TRANSIENT[0]):
        asyncio.run(Thing()._private())


def test_refusals_are_told_apart_from_outages() -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import ResponseError, TryAgainError

    assert is_nogroup(ResponseError("NOGROUP No such key 'x' or consumer group 'g'"))
    assert is_nogroup(ResponseError("UNBLOCKED the stream key no longer exists"))
    assert not is_nogroup(ResponseError("WRONGTYPE Operation against a key"))
    assert is_refused(ResponseError("NOPERM this user has no permissions"), "NOPERM")
    assert not is_refused(ResponseError("WRONGTYPE x"), "NOPERM")
    assert not is_refused(TryAgainError("TRYAGAIN"))  # a slot migrating is an outage, not a refusal
    assert not is_refused(RedisConnectionError("gone"))
