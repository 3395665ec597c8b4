"""Authentication by API token, for HTTP (the JSON API) and WebSockets."""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async
from channels.security.websocket import AllowedHostsOriginValidator
from django.utils.timezone import now

from sessions.models import ApiToken


def bearer_token(authorization: str | None) -> str | None:
    """The token in an `Authorization: Bearer <token>` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def user_for_token(raw: str) -> Any | None:
    token = ApiToken.objects.authenticate(raw)
    if token is None:
        return None
    # One write a minute at most: the admin shows when a token was last used.
    if token.last_used_at is None or (now() - token.last_used_at).total_seconds() > 60:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now())
    return token.user


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class BearerTokenMiddleware:
    """Sets scope["user"] from an Authorization: Bearer header, when one is sent."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: dict, receive: Any, send: Any) -> Any:
        raw = bearer_token(_header(scope, b"authorization"))
        if raw is not None:
            user = await database_sync_to_async(user_for_token)(raw)
            if user is not None:
                scope = dict(scope, user=user)
            else:
                from django.contrib.auth.models import AnonymousUser

                scope = dict(scope, user=AnonymousUser())
        return await self.inner(scope, receive, send)


class BrowserOriginValidator:
    """Origin check for cookie-authenticated sockets.

    A browser always sends Origin, and a page on another site could otherwise ride on
    the user's cookie. A client with a bearer token carries its own credential, so
    it is not a cross-site risk and need not invent an Origin header.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.checked = AllowedHostsOriginValidator(inner)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> Any:
        has_token = bearer_token(_header(scope, b"authorization")) is not None
        if has_token and _header(scope, b"origin") is None:
            return await self.inner(scope, receive, send)
        return await self.checked(scope, receive, send)
