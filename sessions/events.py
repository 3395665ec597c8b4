"""Everything that carries training events to viewers: audiences, payloads,
pushes, and each web process's listener.

Tasks and API views call the push_* functions after the database has the change:
the database is the source of truth, a push only tells viewers to look. A push that
fails (Redis restarting) is logged and dropped; pages backfill from the API.

Events travel by Redis pub/sub (PUBLISH from the worker, one SUBSCRIBE per web
process), not through the Channels layer: see LocalFanout for why. Every event is
also appended to the TrainingEvent table right after it is published, so clients
without a WebSocket poll GET /api/ml/real-time-updates?since=CURSOR and miss
nothing, Redis up or down.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import select
import struct
import threading
import weakref
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypedDict

import redis
import redis.asyncio
import redis.asyncio.retry
from django.conf import settings
from django.db import connection, transaction
from redis.backoff import NoBackoff
from redis.retry import Retry

from sessions.metrics import json_text
from sessions.models import row_metrics

if TYPE_CHECKING:
    from sessions.models import EpochMetric, TrainedEpoch, TrainingSession

logger = logging.getLogger(__name__)

# How long a push may hold up the training loop before it is dropped.
PUSH_TIMEOUT_SECONDS = 5

STAFF_AUDIENCE = "staff"

EventType = Literal[
    "training_started",
    "training_progress",
    "training_completed",
    "training_failed",
    "training_stopped",
    "training_status",
]

# Stored events are kept this long; a poller whose cursor is older is told so.
EVENT_RETENTION = timedelta(days=7)
# Pruning runs on one event write in this many, so its cost is spread thin.
PRUNE_EVERY = 1000
# A batch of logged epochs up to this size is announced epoch by epoch; a larger one
# as a single training_progress event for its last epoch, with "coalesced" saying
# which epochs it covers (pages see the jump and fetch the rest from the API).
PER_EPOCH_EVENTS_UP_TO = 50

FINAL_EVENTS: dict[str, EventType] = {
    "completed": "training_completed",
    "failed": "training_failed",
    "stopped": "training_stopped",
}


class TrainingEvent(TypedDict, total=False):
    type: EventType
    session: dict[str, Any]
    epoch: int
    metrics: dict[str, Any]
    duration: float | None
    # Wall-clock time (epoch seconds) when the epoch was saved: viewers measure
    # live latency against it.
    savedAt: float
    stats: dict[str, Any]
    coalesced: dict[str, int]


def session_audience(session_id: int) -> str:
    """Sockets watching one session."""
    return f"session-{session_id}"


def user_audience(user_id: int) -> str:
    """Sockets watching every session of one user."""
    return f"user-{user_id}"


def audiences_for(session: TrainingSession) -> list[str]:
    """Every audience that may see this session's events."""
    return [
        session_audience(session.pk),
        user_audience(session.owner_id),
        STAFF_AUDIENCE,
    ]


def push_status(session: TrainingSession, event_type: EventType | None = None) -> None:
    """Announce a status change; the event type follows from the status if not given."""
    if event_type is None:
        event_type = FINAL_EVENTS.get(session.status, "training_status")
    _send(session, TrainingEvent(type=event_type, session=session.as_dict()))


def push_started(session: TrainingSession) -> None:
    """Announce that the worker began training the session: to viewers at once,
    and to the event table through the event writer, ahead of the run's
    progress events, which take the same queue. Stored synchronously, it was
    ~1 ms of a run's timed span on the training thread (bench/NOTES.md, session
    18); nobody needs it stored first, as they need a final status."""
    text = json_text(TrainingEvent(type="training_started", session=session.as_dict()))
    _push(session, "training_started", text)
    _writer().add(session, "training_started", text)


def push_epoch(
    session: TrainingSession, row: EpochMetric, stats: dict[str, Any] | None = None
) -> None:
    """Announce one saved epoch (the worker's go through push_trained)."""
    _send(session, _epoch_event(session, row, stats))


def push_trained(
    session: TrainingSession,
    epochs: Sequence[TrainedEpoch],
    stats: Sequence[dict[str, Any]],
) -> list[str]:
    """Announce epochs the worker has just trained (one or a few, each with its
    own event and stats) to viewers at once, in one message; return the events'
    texts for store_trained, once the epochs are saved.

    The events are what _epoch_event makes of their rows, made from the epochs
    themselves: no model instances, and the session's part once for them all
    (it shows the session after the last of them, as a log batch's events do).
    The worker saves its epochs a fraction of a second after it announces them
    (tasks._EpochSaver): a page that finds a gap backfills until it is filled.
    """
    state = session.as_progress_dict()
    texts = [
        json_text(
            TrainingEvent(
                type="training_progress",
                session=state,
                epoch=epoch,
                metrics=row_metrics(metrics),
                duration=duration,
                savedAt=finished.timestamp(),
                stats=epoch_stats,
            )
        )
        for (epoch, metrics, duration, finished), epoch_stats in zip(
            epochs, stats, strict=True
        )
    ]
    _push(session, "training_progress", *texts)
    return texts


def store_trained(session: TrainingSession, texts: Sequence[str]) -> None:
    """Queue push_trained's events for the event table, in a batch off the
    training thread (_EventWriter), once their epochs are saved: a poller that
    reads an epoch's event can read the epoch."""
    _writer().add(session, "training_progress", *texts)


def _epoch_event(
    session: TrainingSession, row: EpochMetric, stats: dict[str, Any] | None
) -> TrainingEvent:
    event = TrainingEvent(
        type="training_progress",
        session=session.as_progress_dict(),
        epoch=row.epoch,
        metrics=row.metrics,
        duration=row.duration,
        savedAt=row.created.timestamp(),
    )
    if stats:
        event["stats"] = stats
    return event


def push_epochs(
    session: TrainingSession,
    rows: Sequence[EpochMetric],
    stats: dict[str, Any] | None = None,
) -> None:
    """Announce epochs stored in one batch (run logging), in epoch order.

    Called inside the transaction that stores them, the events are stored in it
    too and pushed once it commits: one commit per batch instead of two
    (~2 ms of a PostgreSQL log call, bench/NOTES.md), and a viewer never hears
    of epochs it cannot read yet.
    """
    batch = _epochs_events(session, rows, stats)
    if not batch:  # a retried batch: nothing new to store, lock or push
        return
    if not connection.in_atomic_block:
        for event in batch:
            _send(session, event)
        return
    texts = [(event["type"], json_text(event)) for event in batch]
    _writer().flush()  # keep the table in event order, as _send does
    _store([(session, kind, text) for kind, text in texts])

    def push() -> None:
        for kind, text in texts:
            _push(session, kind, text)

    transaction.on_commit(push)


def _epochs_events(
    session: TrainingSession,
    rows: Sequence[EpochMetric],
    stats: dict[str, Any] | None,
) -> list[TrainingEvent]:
    if len(rows) <= PER_EPOCH_EVENTS_UP_TO:
        return [_epoch_event(session, row, stats) for row in rows]
    # Too many to announce one by one: the last epoch stands for them all.
    event = _epoch_event(session, rows[-1], stats)
    event["coalesced"] = {
        "count": len(rows),
        "firstEpoch": rows[0].epoch,
        "lastEpoch": rows[-1].epoch,
    }
    return [event]


def events_channel(redis_url: str) -> str:
    """The Redis pub/sub channel every event goes to.

    Pub/sub ignores database numbers, so the name carries the URL's: a test run
    on its own database (or a second mltrack on the same Redis) never hears a
    dev worker's events, whose session ids would collide with its own.
    """
    db = redis.connection.parse_url(redis_url).get("db", 0)
    return f"mltrack:db{db}:training-events"


def subscriber_name() -> str:
    """The Redis client name of this process's events subscription."""
    return f"mltrack-events-{os.getpid()}"


def wire_message(audiences: Sequence[str], *texts: str) -> str:
    """One published message: its audiences on the first line, then the JSON
    text of each of its events (one or more, in order), a line each (JSON text
    as json_text writes it has no line breaks). The web process routes by the
    first line and forwards the texts untouched."""
    return "\n".join((" ".join(audiences), *texts))


def parse_wire_message(data: str) -> tuple[list[str], list[str]]:
    """(audiences, event texts) of a wire_message."""
    audiences, *texts = data.split("\n")
    return audiences.split(), texts


# Key of the PostgreSQL advisory lock every INSERT of events takes (_store).
EVENT_ORDER_LOCK = 0x6D6C74

# An event to store: its session, its type and its JSON text, as pushed.
StoredItem = tuple["TrainingSession", str, str]


def _store(items: Sequence[StoredItem]) -> None:
    """Append events, in order, to the table the polling endpoint reads."""
    from sessions.models import TrainingEvent as StoredEvent

    with transaction.atomic(savepoint=False):
        # PostgreSQL: serialize event inserts so ids become visible in commit
        # order: a poller that has seen id N can then never miss a
        # later-committed N-1.
        ids = StoredEvent.objects.append(
            [
                (session.pk, session.owner_id, kind, text)
                for session, kind, text in items
            ],
            lock=EVENT_ORDER_LOCK if connection.vendor == "postgresql" else None,
        )
    if any(pk % PRUNE_EVERY == 0 for pk in ids):
        StoredEvent.objects.prune(EVENT_RETENTION)


def _send(session: TrainingSession, event: TrainingEvent) -> None:
    kind, text = event["type"], json_text(event)
    progress = kind == "training_progress"
    if progress:
        _push(session, kind, text)  # viewers first, pollers second
    try:
        # Keep the table in event order: this process's queued events go first.
        _writer().flush()
        _store([(session, kind, text)])
    except Exception:  # the database is the caller's problem
        logger.warning(
            "Could not store %s for session %s",
            event["type"],
            session.pk,
            exc_info=True,
        )
    if not progress:
        # A status change is stored before it is pushed: whoever sees a run's
        # final event finds every event of the run stored, and the worker has
        # nothing left to write for it.
        _push(session, kind, text)


# How long a queued event may wait for more to share its INSERT: pollers ask
# every second or so, and a commit per epoch (with its WAL flush on PostgreSQL)
# was most of a small epoch's tracking cost. At 0.05 s a 7 ms epoch still paid a
# writer's transaction every 7 epochs, on a thread that competes for the GIL and
# for SQLite's write lock; viewers are not waiting on it (they get the push).
STORE_BATCH_SECONDS = 0.25
# The writer closes its database connection after this long without events.
IDLE_SECONDS = 1.0


class _EventWriter:
    """Stores a worker's progress events in batches on a thread of its own.

    Each epoch of a small model took two commits on the training thread, the
    epoch's and its event's; the event's now shares one INSERT and one commit
    with the others that came within STORE_BATCH_SECONDS, and on PostgreSQL
    the event-order lock is taken once per batch instead of once per epoch by
    every run (10 runs at once queued on it). The worker queues an epoch's
    event once the epoch is saved (store_trained), so the table never holds an
    event whose epoch cannot be read.
    """

    def __init__(self) -> None:
        self.queue: list[StoredItem] = []
        self.condition = threading.Condition()
        self.queued = 0
        self.done = 0
        self.hurry = False
        self.thread: threading.Thread | None = None

    def add(self, session: TrainingSession, kind: str, *texts: str) -> None:
        with self.condition:
            if self.thread is None:
                self.thread = threading.Thread(
                    target=self._run, name="event-writer", daemon=True
                )
                self.thread.start()
            was_empty = not self.queue
            self.queue += [(session, kind, text) for text in texts]
            self.queued += len(texts)
            if was_empty:
                self.condition.notify_all()

    def flush(self, timeout: float = PUSH_TIMEOUT_SECONDS * 2) -> None:
        """Wait until every event queued so far is stored (or given up on)."""
        with self.condition:
            wanted = self.queued
            if self.done >= wanted:
                return
            self.hurry = True  # no need to wait for a fuller batch
            self.condition.notify_all()
            self.condition.wait_for(lambda: self.done >= wanted, timeout)

    def _run(self) -> None:
        while True:
            with self.condition:
                if not self.condition.wait_for(lambda: self.queue, IDLE_SECONDS):
                    # Between runs: give the database connection back.
                    connection.close()
                    self.condition.wait_for(lambda: self.queue)
                # Let the batch fill, unless someone is waiting for it (flush).
                self.condition.wait_for(lambda: self.hurry, STORE_BATCH_SECONDS)
                self.hurry = False
                batch, self.queue = self.queue, []
            try:
                _store(batch)
            except Exception:
                logger.warning("Could not store %d events", len(batch), exc_info=True)
                connection.close()  # a broken connection is opened afresh
            with self.condition:
                self.done += len(batch)
                self.condition.notify_all()


_writers: dict[int, _EventWriter] = {}
_writers_lock = threading.Lock()


def _writer() -> _EventWriter:
    """This process's event writer (a forked child makes its own)."""
    pid = os.getpid()
    writer = _writers.get(pid)
    if writer is None:
        with _writers_lock:
            writer = _writers.setdefault(pid, _EventWriter())
    return writer


def _push(session: TrainingSession, kind: str, *texts: str) -> None:
    """Publish events' JSON texts, in one message (serialised once by the caller,
    for the push and the event table alike, not once per viewer in every web
    process)."""
    try:
        _publisher().publish(wire_message(audiences_for(session), *texts))
    except (redis.RedisError, OSError):  # Redis down or restarting: pages backfill
        logger.warning(
            "Could not push %s for session %s", kind, session.pk, exc_info=True
        )


class _Publisher:
    """One thread's connection for pushes: PUBLISH without waiting for the answer.

    The connection is told CLIENT REPLY OFF, so a push is one send() and the
    training thread never waits for Redis: waiting for PUBLISH's reply (and for the
    GIL after it) was a third of a tracked epoch's cost on a 5 ms epoch
    (bench/NOTES.md). The reply only counted the subscribers, which nobody read. A
    push into a connection that Redis has closed is noticed before the next send
    (the socket turns readable at EOF) and that connection is replaced; a send that
    fails raises, and the caller drops the event, as when Redis is down: pages
    backfill. No retry: training must not wait for Redis.
    """

    def __init__(self, redis_url: str) -> None:
        options = redis.connection.parse_url(redis_url)
        self.connection_class = options.pop("connection_class", redis.Connection)
        self.options = {
            **options,
            "socket_connect_timeout": 1,
            # A send that cannot go out (Redis stalled, buffers full) gives up.
            "socket_timeout": PUSH_TIMEOUT_SECONDS,
            "retry": Retry(NoBackoff(), 0),
        }
        channel = events_channel(redis_url).encode()
        self.head = b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n" % (len(channel), channel)
        self.connection: redis.Connection | None = None
        self.poll: select.poll | None = None

    def publish(self, text: str) -> None:
        connection = self._connection()
        data = text.encode()
        # The command packed here: redis-py's general packer was a third of a push.
        command = b"%s$%d\r\n%s\r\n" % (self.head, len(data), data)
        try:
            connection.send_packed_command([command], check_health=False)
        except BaseException:
            self._close()
            raise

    def _connection(self) -> redis.Connection:
        if self.connection is not None and self.poll is not None:
            # Nothing is ever sent back on this connection: readable means that
            # Redis closed it (EOF) or it broke.
            if self.poll.poll(0):
                self._close()
        if self.connection is None:
            connection = self.connection_class(**self.options)
            try:
                connection.connect()
                connection.send_command("CLIENT", "REPLY", "OFF", check_health=False)
            except BaseException:
                connection.disconnect()
                raise
            self.poll = select.poll()
            self.poll.register(connection._sock, select.POLLIN)
            self.connection = connection
        return self.connection

    def _close(self) -> None:
        if self.connection is not None:
            self.connection.disconnect()
        self.connection = self.poll = None


_publishers = threading.local()


def _publisher() -> _Publisher:
    """The calling thread's publisher: each training thread (threads pool) and
    request thread sends on a connection of its own, so no lock is shared and a
    send never waits for another thread's. Keyed by process id (a forked child
    makes its own) and by REDIS_URL (tests change it)."""
    key = (os.getpid(), settings.REDIS_URL)
    mine = getattr(_publishers, "by_key", None)
    if mine is None:
        mine = _publishers.by_key = {}
    publisher = mine.get(key)
    if publisher is None:
        publisher = mine[key] = _Publisher(settings.REDIS_URL)
    return publisher


# ---------------------------------------------------------------- web processes


class Viewer(Protocol):
    """A WebSocket that shows events: the consumer.

    A viewer may also have `write_frame` (see frame_writer): the fan-out then
    writes the frame it built once for every viewer straight to the socket.
    """

    async def send(self, text_data: str | None = None) -> None: ...

    async def close(self, code: int | None = None) -> None: ...


class LocalFanout:
    """One web process's single listener for events.

    It subscribes once to the events channel, receives each event once and writes
    its text to every local socket of the event's audiences. Events that arrive
    while it is still writing go out together, in order, in one frame per socket,
    {"type": "batch", "events": [...]}, so a burst does not pile up behind itself.

    Why not the Channels layer: with channels_redis.core every event was stored
    per member channel and popped one Redis round trip at a time (100 viewers:
    seconds of delay when each socket joined; ~20 ms p99 tails even with one
    member per process), and channels_redis.pubsub re-subscribes silently after
    Redis restarts, so a process could not tell its pages that they had missed
    events. Here the subscription's connection never retries on its own: when it
    breaks, every socket of the process is closed with 1013, the pages reconnect
    with backoff and backfill from the API, and the next socket subscribes again.
    """

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self.viewers: dict[str, set[Viewer]] = {}
        self.pending: list[str] = []
        self.listener: asyncio.Task | None = None
        self.flushing: asyncio.Task | None = None
        self.lock = asyncio.Lock()

    async def join(self, audience: str, viewer: Viewer) -> None:
        """Let a socket see its audience's events. Raises redis.RedisError when
        the process cannot subscribe (Redis down): the socket must not pretend
        to be live."""
        async with self.lock:
            if self.listener is None or self.listener.done():
                pubsub = await self._subscribe()
                self.listener = asyncio.create_task(self._listen(pubsub))
            self.viewers.setdefault(audience, set()).add(viewer)

    async def leave(self, audience: str, viewer: Viewer) -> None:
        async with self.lock:
            members = self.viewers.get(audience)
            if members is None:
                return
            members.discard(viewer)
            if not members:
                del self.viewers[audience]

    async def _subscribe(self) -> redis.asyncio.client.PubSub:
        client = redis.asyncio.Redis.from_url(
            self.redis_url,
            # Names this process's subscription in CLIENT LIST, for operators
            # (and tests) to tell one web process's from another's.
            client_name=subscriber_name(),
            decode_responses=True,
            socket_connect_timeout=2,
            # Idle for hours between runs is normal: no read timeout.
            socket_timeout=None,
            # Never reconnect behind our back (see the class's docstring). The
            # asyncio client's own Retry: the sync one works but warns.
            retry=redis.asyncio.retry.Retry(NoBackoff(), 0),
        )
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(events_channel(self.redis_url))
        except BaseException:
            await pubsub.aclose()
            await client.aclose()
            raise
        return pubsub

    async def _listen(self, pubsub: redis.asyncio.client.PubSub) -> None:
        try:
            while True:
                message = await pubsub.get_message(timeout=None)
                if message is None or message.get("type") != "message":
                    continue
                self.pending.append(message["data"])
                if self.flushing is None or self.flushing.done():
                    self.flushing = asyncio.create_task(self._flush())
        except asyncio.CancelledError:
            raise
        except Exception:
            # Redis went away: whatever was published meanwhile is lost to us.
            logger.warning("Lost the events subscription", exc_info=True)
            await self._reset()
        finally:
            try:
                await pubsub.aclose()
                await pubsub.connection_pool.disconnect()
            except Exception:
                logger.debug("Could not close the subscription", exc_info=True)

    async def _flush(self) -> None:
        while self.pending:
            arrived, self.pending = self.pending, []
            texts: dict[Viewer, list[str]] = {}
            for data in arrived:
                audiences, event_texts = parse_wire_message(data)
                for audience in audiences:
                    for viewer in self.viewers.get(audience, ()):
                        texts.setdefault(viewer, []).extend(event_texts)
            # Viewers of the same audiences get the same frame: build it once.
            frames: dict[tuple[str, ...], tuple[str, bytes]] = {}
            for viewer, viewer_texts in texts.items():
                key = tuple(viewer_texts)
                if key not in frames:
                    text = _frame(viewer_texts)
                    frames[key] = text, websocket_text_frame(text)
                text, frame = frames[key]
                try:
                    write_frame = getattr(viewer, "write_frame", None)
                    if write_frame is None or not write_frame(frame):
                        await viewer.send(text_data=text)
                except Exception:  # one broken socket must not starve the rest
                    logger.debug("Could not send to a viewer", exc_info=True)

    async def _reset(self) -> None:
        """Close every socket (they reconnect and backfill); the next one to
        join subscribes again."""
        async with self.lock:
            viewers = {v for members in self.viewers.values() for v in members}
            self.viewers, self.pending, self.listener = {}, [], None
        for viewer in viewers:
            try:
                await viewer.close(code=CLOSE_TRY_AGAIN)
            except Exception:
                logger.debug("Could not close a viewer", exc_info=True)


def _frame(texts: list[str]) -> str:
    """One WebSocket frame for the JSON texts of one or more events."""
    if len(texts) == 1:
        return texts[0]
    return '{"type": "batch", "events": [' + ", ".join(texts) + "]}"


def websocket_text_frame(text: str) -> bytes:
    """A server's unfragmented, unmasked, uncompressed WebSocket text frame
    (RFC 6455 5.2): the bytes daphne would write for `text`."""
    payload = text.encode("utf-8")
    length = len(payload)
    if length < 126:
        header = bytes((0x81, length))
    elif length < 1 << 16:
        header = struct.pack("!BBH", 0x81, 126, length)
    else:
        header = struct.pack("!BBQ", 0x81, 127, length)
    return header + payload


# The key under which ServerSendMiddleware leaves the server's own send callable.
SERVER_SEND = "mltrack.server_send"


class ServerSendMiddleware:
    """Keeps the ASGI server's own `send` in the scope, before the session and
    auth middleware wrap it, for frame_writer."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: dict, receive: Any, send: Any) -> Any:
        return await self.inner(dict(scope, **{SERVER_SEND: send}), receive, send)


def frame_writer(server_send: Any) -> Callable[[bytes], bool] | None:
    """A function that writes a ready-made frame straight to daphne's socket,
    or None when the socket is not daphne's (the test communicator, another
    server): such a viewer gets each event through the ASGI send.

    Why: sending one event to 100 viewers through the ASGI send cost daphne ~140
    us of CPU per viewer (Channels' send, the session middleware's check of the
    session on every message, daphne's reply handling, autobahn framing and
    logging the same payload each time) and, on two cores shared with the worker,
    made the 100th viewer wait (bench/NOTES.md, session 15). Daphne hands each
    connection `functools.partial(server.handle_reply, protocol)`; its protocol
    is an autobahn WebSocketServerProtocol over a Twisted transport. The function
    writes only while daphne would (the socket open, daphne not told it has
    gone, autobahn's own send queue empty, no compression negotiated), so frames
    keep their order with anything sent the ASGI way; otherwise it returns
    False and the caller sends the ASGI way.
    """
    from autobahn.websocket.protocol import WebSocketServerProtocol

    if not isinstance(server_send, functools.partial) or not server_send.args:
        return None
    protocol, server = server_send.args[0], getattr(server_send.func, "__self__", None)
    if not isinstance(protocol, WebSocketServerProtocol) or not isinstance(
        getattr(server, "connections", None), dict
    ):
        return None

    def write(frame: bytes) -> bool:
        if (
            protocol.state != protocol.STATE_OPEN
            or protocol.send_queue
            or getattr(protocol, "_perMessageCompress", None) is not None
            or server.connections.get(protocol, {"disconnected": True}).get(
                "disconnected"
            )
        ):
            return False
        _write_now(protocol.transport, frame)
        return True

    return write


def _write_now(transport: Any, frame: bytes) -> None:
    """Write `frame` to a Twisted TCP transport, straight to its socket when
    nothing is queued before it.

    Twisted's write() only queues: it asks the event loop to watch the socket
    for writability and writes on the loop's next turn, then stops watching, two
    epoll_ctl calls and a callback through Twisted's logging context per socket
    and frame (over half of daphne's remaining CPU for 100 viewers). The bytes
    keep their order: whatever Twisted has queued goes first, through it.
    """
    from twisted.internet.tcp import Connection

    if (
        not isinstance(transport, Connection)
        or transport.TLS
        or not transport.connected
        or transport.disconnecting
        or transport._writeDisconnected
        or transport._tempDataBuffer
        or transport.offset != len(transport.dataBuffer)
    ):
        transport.write(frame)
        return
    try:
        sent = transport.socket.send(frame)
    except (BlockingIOError, InterruptedError):
        sent = 0
    except OSError:
        sent = 0  # the connection is going: Twisted's write() will find out
    if sent < len(frame):
        transport.write(frame[sent:])


# "Try again later": the page reconnects with backoff.
CLOSE_TRY_AGAIN = 1013

# One fan-out per event loop: asyncio Redis connections belong to their loop.
_fanouts: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LocalFanout] = (
    weakref.WeakKeyDictionary()
)


def local_fanout() -> LocalFanout:
    """This process's (this event loop's) fan-out, made on first use."""
    loop = asyncio.get_running_loop()
    fanout = _fanouts.get(loop)
    if fanout is None:
        fanout = _fanouts[loop] = LocalFanout(settings.REDIS_URL)
    return fanout
