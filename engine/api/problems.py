"""Errors as RFC 9457 problem details (``application/problem+json``).

Every refusal the API makes is a `Problem`, and every error the engine raises
on purpose maps to one status here, so a route never answers 500 to bad input
and never puts a traceback in a response. Anything else is a bug: logged with
its traceback, answered with a bare 500 that names no internals.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec

from engine.core.definition import DefinitionError
from engine.errors import DefinitionConflict, EngineError, InvalidInput, NotFound, Refused, StoreUnavailable
from engine.store.errors import TRANSIENT, is_refused

PROBLEM_JSON = "application/problem+json"
log = logging.getLogger("foldflow.api")

TITLES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
          409: "Conflict", 413: "Content Too Large", 415: "Unsupported Media Type", 422: "Unprocessable Content",
          429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable"}


class ProblemItem(msgspec.Struct, omit_defaults=True):
    """One problem with one part of a request: where (a JSON path such as `steps[2].service`) and what."""

    path: str
    message: str


class ProblemDetail(msgspec.Struct, omit_defaults=True):
    """RFC 9457 problem details; `errors` lists every problem when there are several."""

    status: int
    title: str
    type: str = "about:blank"
    detail: str | None = None
    instance: str | None = None
    errors: list[ProblemItem] | None = None


class Problem(Exception):
    """Raise to answer with a problem document."""

    def __init__(self, status: int, detail: str, *, errors: list[ProblemItem] | None = None,
                 headers: dict[str, str] | None = None, title: str | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.errors = status, detail, errors
        self.headers = headers or {}
        self.title = title or TITLES.get(status, "Error")


UNAVAILABLE_PROBLEM = Problem(503, "Redis did not answer; try again", headers={"Retry-After": "1"})


def problem_response(request: Request[Any, Any, Any], problem: Problem) -> Response[ProblemDetail]:
    body = ProblemDetail(status=problem.status, title=problem.title, detail=problem.detail,
                         instance=request.url.path, errors=problem.errors)
    return Response(body, status_code=problem.status, media_type=PROBLEM_JSON, headers=problem.headers)


def as_problem(exc: Exception) -> Problem:
    """The one mapping from an exception to the answer a client gets."""
    match exc:
        case Problem():
            return exc
        case DefinitionError():
            items = [ProblemItem(path=p.path, message=p.message) for p in exc.problems]
            return Problem(422, f"the definition has {len(items)} problem(s)", errors=items)
        case DefinitionConflict() | Refused():
            return Problem(409, str(exc))
        case NotFound():
            return Problem(404, str(exc))
        case InvalidInput():
            return Problem(400, str(exc))
        case StoreUnavailable():
            return UNAVAILABLE_PROBLEM
        case _ if isinstance(exc, TRANSIENT):
            # A route that reached Redis without the store's translation: the same outage.
            return UNAVAILABLE_PROBLEM
        case _ if is_refused(exc, "NOPERM"):
            # The deployment, not the request: say so to the caller, and to the operator exactly what.
            log.error("Redis refused the API's user a command its routes need: %s", exc)
            return Problem(503, "Redis refused this API's user a command it needs (NOPERM): the ACL of its "
                                "user (deploy/acl/users.acl, ff-api) must grant it; the log names the command")
        case ValidationException():
            return Problem(400, _validation_detail(exc), errors=_validation_items(exc))
        case HTTPException():
            headers = dict(exc.headers or {})
            return Problem(exc.status_code, str(exc.detail), headers=headers)
        case EngineError():
            log.error("engine error reached the API unmapped: %r", exc)
            return Problem(500, "the request could not be completed")
    log.exception("unhandled error in the API", exc_info=exc)
    return Problem(500, "the request could not be completed")


def _validation_items(exc: ValidationException) -> list[ProblemItem] | None:
    extra = exc.extra if isinstance(exc.extra, list) else []
    items = [ProblemItem(path=str(e.get("key") or e.get("source") or ""), message=str(e.get("message", "")))
             for e in extra if isinstance(e, dict)]
    return items or None


def _validation_detail(exc: ValidationException) -> str:
    detail = str(exc.detail)
    return detail if detail and detail != "Bad Request" else "the request is malformed"


def handle(request: Request[Any, Any, Any], exc: Exception) -> Response[ProblemDetail]:
    problem = as_problem(exc)
    # Routing's own 404 and 405 carry only their title; say what was not found or not allowed.
    if problem.status == 404 and problem.detail == TITLES[404]:
        problem = Problem(404, f"no route {request.url.path}", headers=problem.headers)
    elif problem.status == 405 and problem.detail == TITLES[405]:
        problem = Problem(405, f"{request.url.path} does not take {request.method}", headers=problem.headers)
    return problem_response(request, problem)


# Status keys as well as classes: Litestar looks up routing's 404 and 405 by status code.
EXCEPTION_HANDLERS: dict[type[Exception] | int, Any] = {
    Exception: handle, HTTPException: handle, **{code: handle for code in (400, 401, 403, 404, 405, 413, 415, 500)}}


def problems(*codes: int, public: bool = False) -> dict[int, ResponseSpec]:
    """The `responses=` of a route: each status it can refuse with, as a problem document
    in the OpenAPI spec (plus 401/403 when it needs a token, and 503 when Redis is away)."""
    every = {*codes, 503} | (set() if public else {401, 403})
    return {code: ResponseSpec(data_container=ProblemDetail, description=TITLES.get(code, "Error"),
                               media_type=PROBLEM_JSON, generate_examples=False) for code in sorted(every)}


__all__ = ["EXCEPTION_HANDLERS", "PROBLEM_JSON", "Problem", "ProblemDetail", "ProblemItem", "as_problem", "problems"]
