"""Dead letters over HTTP (what `foldflow dlq` does): list and inspect them with
the read scope, replay or drop them with admin. A dead letter is named by its
ref, `<partition>/<id>` (`events/<id>` for the external events' dlq), as the
CLI names it; replay refusals (a source that is not this deployment's) are 409."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import delete, get, post
from litestar.di import NamedDependency
from litestar.params import PathParameter, QueryParameter

from engine.api.problems import Problem, problems
from engine.api.services import Services
from engine.api.ui.models import DeadLetterPage, DeadLetterView, Replayed
from engine.errors import InvalidInput
from engine.store.dlq import DeadLetter, DeadLetters, check_entry_id, deployment_keys, parse_partition
from engine.store.errors import translated

TAGS = ["dead letters"]
ADMIN = {"scope": "admin"}
PartitionParam = Annotated[str, PathParameter(pattern=r"^([0-9]{1,4}|events)$", description="0..P-1 or events")]
IdParam = Annotated[str, PathParameter(pattern=r"^[0-9]{1,20}-[0-9]{1,20}$", description="its id in the dlq")]


def view(letter: DeadLetter) -> DeadLetterView:
    return DeadLetterView(ref=letter.ref, id=letter.id, dlq=letter.dlq, partition=str(letter.partition),
                          reason=letter.reason, source=letter.source, entry_id=letter.entry_id, group=letter.group,
                          ts=letter.ts, deliveries=letter.deliveries, fields=letter.fields,
                          replayable=letter.replayable, refusal=letter.refusal)


async def _letters(services: Services) -> DeadLetters:
    return DeadLetters(services.redis, await deployment_keys(services.redis, services.client.keys))


@translated
async def _find(services: Services, partition: str | None, reason: str | None, limit: int) -> list[DeadLetter]:
    letters = await _letters(services)
    return await letters.find(partition=parse_partition(partition, letters.keys), reason_contains=reason, limit=limit)


@translated
async def _one(services: Services, partition: str, entry_id: str) -> tuple[DeadLetters, DeadLetter]:
    letters = await _letters(services)
    return letters, await letters.get(check_entry_id(entry_id), parse_partition(partition, letters.keys))


@get("/dead-letters", operation_id="listDeadLetters", tags=TAGS, responses=problems(400),
     summary="Dead letters of every partition and of the external events, oldest first")
async def list_dead_letters(
    services: NamedDependency[Services],
    partition: Annotated[str | None, QueryParameter(pattern=r"^([0-9]{1,4}|events)$",
                                                    description="only this dlq: 0..P-1 or events")] = None,
    reason_contains: Annotated[str | None, QueryParameter(max_length=200)] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
) -> DeadLetterPage:
    return DeadLetterPage(items=[view(d) for d in await _find(services, partition, reason_contains, limit)])


@get("/dead-letters/{partition:str}/{entry_id:str}", operation_id="getDeadLetter", tags=TAGS,
     summary="One dead letter, with its original fields", responses=problems(400, 404))
async def get_dead_letter(services: NamedDependency[Services], partition: PartitionParam,
                          entry_id: IdParam) -> DeadLetterView:
    return view((await _one(services, partition, entry_id))[1])


@translated
async def _replay(services: Services, partition: str, entry_id: str) -> Replayed:
    letters, letter = await _one(services, partition, entry_id)
    if letter.refusal is not None:
        raise Problem(409, f"dead letter {letter.ref}: {letter.refusal}")
    try:
        new_id = await letters.replay(letter)
    except InvalidInput as exc:  # refused after the check above (its fields changed meanwhile)
        raise Problem(409, str(exc)) from None
    return Replayed(ref=letter.ref, source=letter.source, new_id=new_id)


@post("/dead-letters/{partition:str}/{entry_id:str}/replay", opt=ADMIN, status_code=200,
      operation_id="replayDeadLetter", tags=TAGS, responses=problems(400, 404, 409),
      summary="Put the original entry back on its source stream and delete the dead letter")
async def replay_dead_letter(services: NamedDependency[Services], partition: PartitionParam,
                             entry_id: IdParam) -> Replayed:
    return await _replay(services, partition, entry_id)


@translated
async def _drop(services: Services, partition: str, entry_id: str) -> None:
    letters, letter = await _one(services, partition, entry_id)
    await letters.drop(letter)


@delete("/dead-letters/{partition:str}/{entry_id:str}", opt=ADMIN, status_code=204,
        operation_id="dropDeadLetter", tags=TAGS, responses=problems(400, 404),
        summary="Delete a dead letter for good")
async def drop_dead_letter(services: NamedDependency[Services], partition: PartitionParam, entry_id: IdParam) -> None:
    await _drop(services, partition, entry_id)


ROUTES: list[Any] = [list_dead_letters, get_dead_letter, replay_dead_letter, drop_dead_letter]
