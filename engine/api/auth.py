"""Bearer-token auth: JWTs signed with a shared secret (HS256 by default, as
seed 001 configures `JWT_SECRET`/`JWT_ALGORITHM`) or by an identity provider
whose keys a JWKS URL publishes (RS256/ES256).

Fail closed: one guard runs on every route, and a route is open only when it
says so (`opt={"public": True}`: health and metrics). Every other route needs a
token whose `scope` claim (space-separated, or a list in `scp`) grants the
route's scope, taken from `opt["scope"]` or else from its method (GET: read,
anything else: write). Scopes nest: `admin` grants `write`, `write` grants
`read`. Browsers cannot put headers on EventSource or WebSocket requests, so
those two also take the token as `?access_token=`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import jwt
from litestar.connection import ASGIConnection
from litestar.enums import ScopeType
from litestar.exceptions import WebSocketException
from litestar.handlers.base import BaseRouteHandler

from engine.api.problems import Problem
from engine.api.settings import ApiSettings

SCOPES = ("read", "write", "admin")
JWKS_TIMEOUT_S = 5.0
ASYMMETRIC = frozenset({"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512", "EdDSA"})
_GRANTS = {"read": {"read"}, "write": {"read", "write"}, "admin": {"read", "write", "admin"}}


class TokenVerifier:
    """Checks a token's signature, expiry and audience; answers the scopes it grants."""

    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings
        # A bounded fetch: an identity provider that hangs costs a request JWKS_TIMEOUT_S, then a 503.
        self._jwks = (jwt.PyJWKClient(settings.jwks_url, cache_keys=True, timeout=JWKS_TIMEOUT_S)
                      if settings.jwks_url else None)

    async def scopes(self, token: str) -> set[str]:
        key: Any = self.settings.jwt_secret
        algorithms = [self.settings.jwt_algorithm]
        try:
            if self._jwks is not None:
                # PyJWKClient fetches with urllib; keep the event loop free while it does.
                signing = await asyncio.to_thread(self._jwks.get_signing_key_from_jwt, token)
                # The key's own algorithm (its JWK's `alg`, else its type's), never an HMAC one:
                # a public key must not verify an HS256 token (algorithm confusion).
                key, algorithms = signing.key, [a for a in (signing.algorithm_name,) if a in ASYMMETRIC]
            claims = jwt.decode(token, key, algorithms=algorithms,
                                audience=self.settings.jwt_audience or None,
                                options={"require": ["exp"], "verify_aud": bool(self.settings.jwt_audience)})
        except jwt.PyJWKClientConnectionError as exc:
            # The identity provider is away, not the token bad: the client should retry, not re-authenticate.
            raise Problem(503, f"the JWKS of the identity provider could not be fetched: {exc}",
                          headers={"Retry-After": "5"}) from None
        except jwt.PyJWKClientError as exc:
            raise Problem(401, f"the token's signing key could not be found: {exc}",
                          headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}) from None
        except jwt.InvalidTokenError as exc:
            raise Problem(401, f"invalid token: {exc}",
                          headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}) from None
        return granted(claims)


def granted(claims: dict[str, Any]) -> set[str]:
    raw = claims.get("scope", claims.get("scp", ""))
    names = raw.split() if isinstance(raw, str) else [str(s) for s in raw] if isinstance(raw, list) else []
    out: set[str] = set()
    for name in names:
        out |= _GRANTS.get(name, set())
    return out


def required_scope(handler: BaseRouteHandler) -> str | None:
    """The scope a route needs, or None when it is public."""
    if handler.opt.get("public"):
        return None
    scope = handler.opt.get("scope")
    if scope is not None:
        return str(scope)
    methods = getattr(handler, "http_methods", None) or {"GET"}
    return "read" if set(methods) <= {"GET", "HEAD", "OPTIONS"} else "write"


def bearer(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    header = connection.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return connection.query_params.get("access_token") or None


async def guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    verifier: TokenVerifier | None = connection.app.state.get("verifier")
    scope = required_scope(handler)
    if verifier is None or scope is None:
        return
    try:
        await _authorize(connection, verifier, scope)
    except Problem as problem:
        if connection.scope["type"] != ScopeType.WEBSOCKET:
            raise
        # A WebSocket refusal is a close frame, not a body: 4000 + the HTTP status, as Litestar codes them.
        raise WebSocketException(detail=problem.detail, code=4000 + problem.status) from None


async def _authorize(connection: ASGIConnection[Any, Any, Any, Any], verifier: TokenVerifier, scope: str) -> None:
    token = bearer(connection)
    if token is None:
        raise Problem(401, "this route needs a bearer token (Authorization: Bearer <JWT>)",
                      headers={"WWW-Authenticate": f'Bearer scope="{scope}"'})
    if scope not in await verifier.scopes(token):
        raise Problem(403, f"the token does not grant the {scope!r} scope this route needs",
                      headers={"WWW-Authenticate": f'Bearer error="insufficient_scope" scope="{scope}"'})
