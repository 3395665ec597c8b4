from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import django
from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.core.signals import request_finished
from django.db import close_old_connections, connections

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mltrack.settings")

REQUEST_THREAD = "web-request"


class SyncViewsASGIHandler(ASGIHandler):
    """Django's ASGI handler, running each request's middleware and view in one
    step on one of a fixed set of threads, each of which keeps its database
    connection from one request to the next.

    Every view here is synchronous. Django's own handler runs the middleware
    asynchronously and hops to the request's thread and back for each middleware
    method (about 16 hops a request); here it is one hop.

    Django's handler also gives each request a thread of its own, so a database
    connection could not outlive its request: every request paid for a new one
    (~8 ms on PostgreSQL). Here the threads live on, CONN_MAX_AGE keeps their
    connections and CONN_HEALTH_CHECKS replaces one that died (a database
    restart) before a request uses it. Nothing is handed from thread to thread,
    so nothing can be lost when daphne cancels a request whose client has gone:
    with a pool of connections instead, such a request never gave its connection
    back (tests/integration/test_connection_pool.py; bench/NOTES.md).
    """

    def __init__(self) -> None:
        self.threads = ThreadPoolExecutor(
            settings.WEB_THREADS, thread_name_prefix=REQUEST_THREAD
        )
        super().__init__()

    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)
        chain = self._middleware_chain

        def respond(request: Any) -> Any:
            # What request_started and request_finished do for WSGI servers,
            # on the thread whose connection it is.
            close_old_connections()
            try:
                return chain(request)
            finally:
                close_old_connections()

        self._middleware_chain = sync_to_async(
            respond, thread_sensitive=False, executor=self.threads
        )

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle HTTP, not {scope['type']}")
        async with ThreadSensitiveContext():
            try:
                await self.handle(scope, receive, send)
            except BaseException:
                # Cancelled or failed after the view: request_finished may not
                # have run on the thread of this request's context, where a
                # streaming response's iterator may have opened a connection.
                # Close it before the context ends that thread; shielded, as
                # daphne cancels again while this waits.
                await asyncio.shield(sync_to_async(connections.close_all)())
                raise


def _close_short_lived(**kwargs: Any) -> None:
    # request_finished runs on the thread of the request's context (Django's
    # ThreadSensitiveContext), which ends with the request: a connection a
    # streaming response's iterator opened there must not be kept.
    if not threading.current_thread().name.startswith(REQUEST_THREAD):
        connections.close_all()


# The web process keeps its connections (see SyncViewsASGIHandler); only for the
# settings read here, so a process started from this one (a test's Celery worker)
# keeps its own default.
keep_by_default = "DB_CONN_MAX_AGE" not in os.environ
os.environ.setdefault("DB_CONN_MAX_AGE", "600")
try:
    # Set up Django before importing consumers: they import models.
    django.setup(set_prefix=False)
finally:
    if keep_by_default:
        del os.environ["DB_CONN_MAX_AGE"]
# Only for requests this handler serves, not a test client's in the same process.
request_finished.connect(_close_short_lived, sender=SyncViewsASGIHandler)
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
