"""What every route shares beyond auth: the media types a body may have, the
OpenAPI document's refusals common to all routes, and the docs at `/docs`.

Litestar decodes any body as JSON whatever its Content-Type says, so a
`text/plain` body would be taken; `check_media_type` answers 415 instead. A
route that takes more than JSON (YAML definitions) lists its types in
`opt={"accepts": (...)}`.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Litestar, Request, Router
from litestar.enums import ScopeType
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import OpenAPI, OpenAPIMediaType, OpenAPIResponse, OpenAPIType, Operation, Reference, Schema
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from engine.api.problems import PROBLEM_JSON, TITLES, Problem, ProblemDetail

JSON = ("application/json",)
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def accepted(opt: dict[str, Any]) -> tuple[str, ...]:
    return (*JSON, *opt.get("accepts", ()))


def has_body(request: Request[Any, Any, Any]) -> bool:
    length = request.headers.get("content-length")
    if length is not None:
        return length.strip() not in ("", "0")
    return "transfer-encoding" in request.headers


def media_type_refusal(content_type: str, accepts: tuple[str, ...]) -> str | None:
    """Why a body of this Content-Type is refused, or None. No Content-Type at all is taken as JSON."""
    media = content_type.split(";", 1)[0].strip().lower()
    if not media or media in accepts or (media.endswith("+json") and "application/json" in accepts):
        return None
    return f"this route takes {', '.join(accepts)}, not {media}"


async def check_media_type(request: Request[Any, Any, Any]) -> None:
    if request.method not in BODY_METHODS or not has_body(request):
        return
    accepts = accepted(request.route_handler.opt)
    refusal = media_type_refusal(request.headers.get("content-type", ""), accepts)
    if refusal:
        raise Problem(415, refusal, headers={"Accept-Post": ", ".join(accepts)})


class Docs(SwaggerRenderPlugin):
    """Swagger UI at `/docs`, with the schema router at `/`.

    Litestar adds a catch-all `/{path:str}` HTML 404 under the schema path; at
    `/` it would answer every unknown GET with HTML and every unknown POST with
    405, so it is dropped and unknown routes reach the problem+json 404."""

    def receive_router(self, router: Router) -> None:
        super().receive_router(router)
        catch_all = [r for r in router.routes if "{path:" in r.path]
        for route in catch_all:
            router.routes.remove(route)
            router.route_handler_method_map.pop(route.path, None)


def _problem_response(code: int, schema: Reference | Schema) -> OpenAPIResponse:
    return OpenAPIResponse(description=TITLES.get(code, "Error"), content={PROBLEM_JSON: OpenAPIMediaType(schema=schema)})


def _complete(operation: Operation, has_params: bool, schema: Reference | Schema) -> None:
    """Every operation: 400 when it takes parameters or a body (validation), 413 and 415 with a body,
    and 503 (Redis away), whether or not its route called problems()."""
    codes: set[int] = {503}
    if has_params or operation.request_body is not None:
        codes.add(400)
    if operation.request_body is not None:
        codes |= {413, 415}
    responses = operation.responses if operation.responses is not None else {}
    for code in sorted(codes):
        if str(code) not in responses:
            responses[str(code)] = _problem_response(code, schema)
    operation.responses = responses


def _problem_schema(spec: OpenAPI) -> Reference | Schema:
    schemas = spec.components.schemas if spec.components and spec.components.schemas else {}
    name = next((n for n in schemas if n.endswith(ProblemDetail.__name__)), None)
    if name is not None:
        return Reference(ref=f"#/components/schemas/{name}")
    return Schema(type=OpenAPIType.OBJECT, required=["status", "title"])


def complete_spec(spec: OpenAPI) -> OpenAPI:
    schema = _problem_schema(spec)
    for item in (spec.paths or {}).values():
        for method in ("get", "put", "post", "delete", "patch"):
            operation: Operation | None = getattr(item, method)
            if operation is not None:
                _complete(operation, bool(operation.parameters or item.parameters), schema)
    return spec


def completed_on_startup(app: Litestar) -> None:
    """The document is built once; the shared refusals are added to it before the first request."""
    complete_spec(app.openapi_schema)


def websocket_denials(app: ASGIApp) -> ASGIApp:
    """A WebSocket refused before its handshake completes (the guard closes with 4000 + status)
    answers the handshake with that HTTP status and a problem document, where the server offers
    ASGI's denial-response extension (uvicorn does); a client then sees 401 or 403, not the bare
    403 a close before accept becomes. Without the extension the close code stands."""

    async def denying(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.WEBSOCKET or "websocket.http.response" not in (scope.get("extensions") or {}):
            await app(scope, receive, send)
            return
        accepted = False

        async def sending(message: Message) -> None:
            nonlocal accepted
            accepted = accepted or message["type"] == "websocket.accept"
            code = int(message.get("code") or 1000) if message["type"] == "websocket.close" else 0
            if accepted or not 4400 <= code < 4600:
                await send(message)
                return
            status = code - 4000
            body = msgspec.json.encode(ProblemDetail(status=status, title=TITLES.get(status, "Error"),
                                                     detail=str(message.get("reason") or "") or None,
                                                     instance=scope["path"]))
            headers = [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(body)).encode())]
            if status == 401:
                headers.append((b"www-authenticate", b"Bearer"))
            await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
            await send({"type": "websocket.http.response.body", "body": body, "more_body": False})

        await app(scope, receive, sending)

    return denying
