from __future__ import annotations

import asyncio
import gc
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import django
from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.conf import settings
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.db import close_old_connections, connections
from django.http import FileResponse
from django.urls import set_script_prefix

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mltrack.settings")

REQUEST_THREAD = "web-request"


class SyncViewsASGIHandler(ASGIHandler):
    """Django's ASGI handler, running each request's synchronous work (the
    request_started signal, middleware and view, and closing the response, which
    sends request_finished) in one step on one of a fixed set of threads, each
    of which keeps its database connection from one request to the next.

    Every view here is synchronous. Django's own handler runs the middleware
    asynchronously and hops to the request's thread and back for each middleware
    method (about 16 hops a request), and once more for each signal; here it is
    one hop (respond()).

    Django's handler also gives each request a thread of its own, so a database
    connection could not outlive its request: every request paid for a new one
    (~8 ms on PostgreSQL). Here the threads live on, CONN_MAX_AGE keeps their
    connections and CONN_HEALTH_CHECKS replaces one that died (a database
    restart) before a request uses it. Nothing is handed from thread to thread,
    so nothing can be lost when daphne cancels a request whose client has gone:
    with a pool of connections instead, such a request never gave its connection
    back (tests/integration/test_connection_pool.py; bench/NOTES.md).

    Django's handler also started a thread of its own for each request (its
    ThreadSensitiveContext), for the signals and the response's close(), and a
    second one to join it: each request takes one of the fixed threads instead
    (asgiref 3.13's ThreadSensitiveContext(executor=...)).
    """

    def __init__(self) -> None:
        # One single-thread executor per request thread: ThreadSensitiveContext
        # needs one that runs one call at a time. A request waits for a free one.
        # Last in, first out: the thread that answered last answers next, so a
        # quiet site keeps one warm thread, connection and PostgreSQL backend
        # instead of taking the 20 in turn (each with cold caches, and 20
        # connections to open at the start): a single-epoch log call took ~9 %
        # less, and the first of several 1,000-epoch batch runs no longer ran at
        # half speed (bench/NOTES.md).
        self.idle: asyncio.LifoQueue[ThreadPoolExecutor] = asyncio.LifoQueue()
        for _ in range(settings.WEB_THREADS):
            self.idle.put_nowait(
                ThreadPoolExecutor(1, thread_name_prefix=REQUEST_THREAD)
            )
        super().__init__()

    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)

    def respond(self, scope: dict, body_file: Any) -> tuple[Any, list | None]:
        """On the request's thread, in one step: request_started, the request,
        middleware and view, and for a response whose content is all here, its
        close() (request_finished) too. Returns the response and, unless it
        streams, its headers ready to send.

        Django's handler hops to a thread and back three times a request
        (request_started, middleware and view, close()), and runs two tasks to
        listen for a disconnect: ~0.5 ms of a 2 ms request (bench/NOTES.md).
        Every view here is synchronous, so nothing would be cancelled by a
        disconnect anyway: the thread finishes the request whatever daphne does.
        """
        # What request_started and request_finished do, again here: a cancelled
        # request never sends request_finished, and a pooled connection (DB_POOL)
        # must go back however the request ends.
        close_old_connections()
        try:
            signals.request_started.send(sender=self.__class__, scope=scope)
            request, response = self.create_request(scope, body_file)
            if request is not None:
                response = self._middleware_chain(request)
                response._handler_class = self.__class__
            if isinstance(response, FileResponse):
                # As Django's handler: daphne does its own chunking.
                response.block_size = self.chunk_size
            if response.streaming:
                return response, None
            headers = [
                (
                    header.encode("ascii") if isinstance(header, str) else header,
                    value.encode("latin1") if isinstance(value, str) else value,
                )
                for header, value in response.items()
            ]
            headers += [
                (b"Set-Cookie", cookie.output(header="").encode("ascii").strip())
                for cookie in response.cookies.values()
            ]
            response.close()  # request_finished, before the bytes leave
            return response, headers
        finally:
            close_old_connections()

    async def handle(self, scope: dict, receive: Any, send: Any) -> None:
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        try:
            set_script_prefix(get_script_prefix(scope))
            # On the request's thread (its ThreadSensitiveContext's executor).
            response, headers = await sync_to_async(
                self.respond, thread_sensitive=True
            )(scope, body_file)
            if headers is None:  # streaming: Django's way, then close()
                await self.send_response(response, send)
                await sync_to_async(response.close, thread_sensitive=True)()
                return
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": headers,
                }
            )
            content = response.content
            for chunk, last in self.chunk_bytes(content):
                await send(
                    {"type": "http.response.body", "body": chunk, "more_body": not last}
                )
        finally:
            body_file.close()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle HTTP, not {scope['type']}")
        if fastlog.may_answer(scope):
            read = await fastlog.read_body(receive)
            if read is None:  # the client went away
                return
            body, receive = read
            answer = None if body is None else await fastlog.answer(scope, body)
            if answer is not None:
                status, headers, content = answer
                await send(
                    {
                        "type": "http.response.start",
                        "status": status,
                        "headers": headers,
                    }
                )
                await send({"type": "http.response.body", "body": content})
                return
        executor = await self.idle.get()
        finished = False
        try:
            async with ThreadSensitiveContext(executor=executor):
                try:
                    await self.handle(scope, receive, send)
                    finished = True
                except BaseException:
                    # Cancelled or failed after the view: request_finished may
                    # not have run, and a streaming response's iterator may have
                    # opened a connection (a pooled one would be lost). Close
                    # the thread's connections; shielded, as daphne cancels
                    # again while this waits.
                    await asyncio.shield(sync_to_async(connections.close_all)())
                    raise
        finally:
            if finished:
                self.idle.put_nowait(executor)
            else:
                self._release_when_free(executor)

    def _release_when_free(self, executor: ThreadPoolExecutor) -> None:
        """Give the thread back once what it runs has ended.

        A request cancelled while its view runs (the client went away) leaves the
        view running on the thread. Given back at once, it would be the next
        request's thread (last in, first out), and that request would wait behind
        the view; the executor runs one call at a time, so a no-op queued behind
        the view tells when it is free.
        """
        loop = asyncio.get_running_loop()

        def free(_: Any) -> None:
            try:
                loop.call_soon_threadsafe(self.idle.put_nowait, executor)
            except RuntimeError:  # the loop has closed: the process is ending
                pass

        executor.submit(int).add_done_callback(free)


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
django_asgi_app = SyncViewsASGIHandler()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from sessions import fastlog  # noqa: E402
from sessions.auth import BearerTokenMiddleware, BrowserOriginValidator  # noqa: E402
from sessions.events import ServerSendMiddleware  # noqa: E402
from sessions.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": ServerSendMiddleware(
            BrowserOriginValidator(
                AuthMiddlewareStack(
                    BearerTokenMiddleware(URLRouter(websocket_urlpatterns))
                )
            )
        ),
    }
)


def _leave_form_bodies_unparsed() -> None:
    """Tell Twisted not to parse POST bodies into request.args under daphne.

    Daphne hands the raw body to the application and never reads request.args,
    but Twisted's Request parses every form POST's body into them, on the event
    loop: a 9 MB CSV upload held it ~270 ms here (every WebSocket and request of
    the process waited), and each JSON POST paid ~40 us to have its
    Content-Type read through email.message. parsePOSTFormSubmission is
    Twisted's own switch for this; daphne does not pass it on."""
    try:
        from daphne.http_protocol import WebRequest
    except ImportError:  # served by another ASGI server
        return
    init = WebRequest.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("parsePOSTFormSubmission", False)
        init(self, *args, **kwargs)

    WebRequest.__init__ = __init__


_leave_form_bodies_unparsed()

# Django, Channels and daphne's Twisted, loaded by now, are ~120,000 objects held
# for life; each full collection walked them all, ~50-160 ms on this machine, one
# every 60-70 log batches of 1,000 epochs (whose live rows get promoted while
# a batch is parsed). Leave them out of every collection, as the worker does
# (mltrack/celery.py): full collections then took ~8 ms (bench/NOTES.md).
gc.freeze()
