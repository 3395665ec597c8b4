from __future__ import annotations

import asyncio
import os
from typing import Any

import django
from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.core.handlers.asgi import ASGIHandler
from django.db import close_old_connections

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mltrack.settings")


class SyncViewsASGIHandler(ASGIHandler):
    """Django's ASGI handler, running each request's middleware and view in one
    step on the request's thread, then giving its database connection back there.

    Every view here is synchronous. Django's own handler runs the middleware
    asynchronously and hops to the request's thread and back for each middleware
    method (about 16 hops a request); here it is one hop (bench/NOTES.md).

    It also stops pooled PostgreSQL connections from leaking. Django gives a
    request's connection back when request_finished runs on the request's thread,
    after the response. When a client leaves before the answer and the request is
    still running 10 s later, daphne cancels it: request_finished is never run,
    the thread ends holding its connection, and the pool loses it for good
    (tests/integration/test_connection_pool.py). Here the thread gives it back as
    soon as the view and middleware are done, whatever happens to the request.
    """

    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)
        chain = self._middleware_chain

        def respond(request: Any) -> Any:
            try:
                return chain(request)
            finally:
                close_old_connections()

        self._middleware_chain = sync_to_async(respond, thread_sensitive=True)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle HTTP, not {scope['type']}")
        async with ThreadSensitiveContext():
            try:
                await self.handle(scope, receive, send)
            except BaseException:
                # Cancelled or failed after the view: request_finished may not
                # have run, and a streaming response's iterator may have opened
                # a connection again. Close it on the request's thread, before
                # the context ends that thread; shielded, as daphne cancels
                # again while this waits.
                await asyncio.shield(sync_to_async(close_old_connections)())
                raise


# The web process pools its PostgreSQL connections (DB_POOL in settings.py): a new
# connection cost ~8 ms of a ~20 ms log call (bench/NOTES.md). Only for the settings
# read here: processes started from this one (a test's Celery worker) keep theirs.
pool_by_default = "DB_POOL" not in os.environ
os.environ.setdefault("DB_POOL", "1")
try:
    # Set up Django before importing consumers: they import models.
    django.setup(set_prefix=False)
finally:
    if pool_by_default:
        del os.environ["DB_POOL"]
django_asgi_app = SyncViewsASGIHandler()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from sessions.auth import BearerTokenMiddleware, BrowserOriginValidator  # noqa: E402
from sessions.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": BrowserOriginValidator(
            AuthMiddlewareStack(BearerTokenMiddleware(URLRouter(websocket_urlpatterns)))
        ),
    }
)
