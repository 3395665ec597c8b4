"""Everything that touches the channel layer: group names, payloads, pushes.

Tasks and API views call the push_* functions after the database has the change:
the database is the source of truth, a push only tells viewers to look. A push that
fails (Redis restarting) is logged and dropped; pages backfill from the API.

Every event is also appended to the TrainingEvent table right after it goes to
Redis, so clients without a WebSocket poll GET /api/ml/real-time-updates?since=CURSOR
and miss nothing, Redis up or down.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypedDict

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import connection, transaction

if TYPE_CHECKING:
    from sessions.models import EpochMetric, TrainingSession

logger = logging.getLogger(__name__)

# How long a push may hold up the training loop before it is dropped.
PUSH_TIMEOUT_SECONDS = 5

# Every event goes to this one group. Each web process joins it once and picks the
# sockets that may see the event by its audiences (LocalFanout), so a push is one
# group send however many pages watch.
EVENTS_GROUP = "training-events"
EVENT_HANDLER = "training.event"
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


def push_epoch(
    session: TrainingSession, row: EpochMetric, stats: dict[str, Any] | None = None
) -> None:
    _send(session, _epoch_event(session, row, stats))


def _epoch_event(
    session: TrainingSession, row: EpochMetric, stats: dict[str, Any] | None
) -> TrainingEvent:
    event = TrainingEvent(
        type="training_progress",
        session=session.as_dict(),
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
    """Announce epochs stored in one batch (run logging), in epoch order."""
    for event in _epochs_events(session, rows, stats):
        _send(session, event)


def _epochs_events(
    session: TrainingSession,
    rows: Sequence[EpochMetric],
    stats: dict[str, Any] | None,
) -> list[TrainingEvent]:
    if len(rows) <= PER_EPOCH_EVENTS_UP_TO:
        return [_epoch_event(session, row, stats) for row in rows]
    first, last = rows[0], rows[-1]
    event = TrainingEvent(
        type="training_progress",
        session=session.as_dict(),
        epoch=last.epoch,
        metrics=last.metrics,
        duration=last.duration,
        savedAt=last.created.timestamp(),
        coalesced={
            "count": len(rows),
            "firstEpoch": first.epoch,
            "lastEpoch": last.epoch,
        },
    )
    if stats:
        event["stats"] = stats
    return [event]


def event_message(audiences: list[str], text: str) -> dict[str, Any]:
    """The channel-layer message that carries one event's JSON text."""
    return {"type": EVENT_HANDLER, "audiences": audiences, "text": text}


def _store(session: TrainingSession, event: TrainingEvent) -> None:
    """Append the event to the table the polling endpoint reads."""
    from sessions.models import TrainingEvent as StoredEvent

    # Inside record_epoch's transaction no savepoint is needed: a failure there
    # rolls the whole epoch back, and the worker retries it.
    with transaction.atomic(savepoint=False):
        if connection.vendor == "postgresql":
            # Serialize event inserts so ids become visible in commit order: a
            # poller that has seen id N can then never miss a later-committed N-1.
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [0x6D6C74])
        stored = StoredEvent.objects.create(
            session_id=session.pk,
            owner_id=session.owner_id,
            type=event["type"],
            data=event,
        )
    if stored.pk % PRUNE_EVERY == 0:
        StoredEvent.objects.prune(EVENT_RETENTION)


def _send(session: TrainingSession, event: TrainingEvent) -> None:
    # Viewers first, pollers second: storing the event is a second write
    # transaction, and with ten runs writing to one SQLite file, waiting for its
    # lock before the push put tens of milliseconds on the live latency's p99.
    _push(session, event)
    try:
        _store(session, event)
    except Exception:  # the database is the caller's problem
        logger.warning(
            "Could not store %s for session %s",
            event["type"],
            session.pk,
            exc_info=True,
        )


def _push(session: TrainingSession, event: TrainingEvent) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    # Serialised once here, not once per viewer in every web process.
    text = json.dumps(event)

    message = event_message(audiences_for(session), text)

    async def send_all() -> None:
        await layer.group_send(EVENTS_GROUP, message)

    what = f"{event['type']} for session {session.pk}"
    if _one_loop and _keeps_connections_per_loop(layer):
        # Hand the push to the push loop and go on training. A status change
        # waits for its push (and every push before it): a task must not end
        # before its final event is out.
        sent = _hand_over(send_all, what)
        if event["type"] != "training_progress":
            try:
                sent.result(PUSH_TIMEOUT_SECONDS)
            except Exception:  # logged by the push loop; the page will backfill
                pass
        return
    started = time.monotonic()
    try:
        async_to_sync(send_all)()
    except Exception:  # Redis down or restarting: the page will backfill.
        logger.warning("Could not push %s", what, exc_info=True)
    else:
        logger.debug("pushed %s in %.1f ms", what, (time.monotonic() - started) * 1000)


# Pushes waiting for Redis beyond this many are dropped (and logged): a Redis that
# hangs must not make a worker hoard every epoch in memory. Pages backfill.
MAX_WAITING_PUSHES = 10_000

PushJob = tuple[Callable[[], Awaitable[None]], str, concurrent.futures.Future]


def _hand_over(
    send_all: Callable[[], Awaitable[None]], what: str
) -> concurrent.futures.Future:
    sent: concurrent.futures.Future = concurrent.futures.Future()
    loop, waiting = _push_loop()
    loop.call_soon_threadsafe(_enqueue, waiting, (send_all, what, sent))
    return sent


def _enqueue(waiting: asyncio.Queue[PushJob], job: PushJob) -> None:
    if waiting.qsize() >= MAX_WAITING_PUSHES:
        logger.warning("Dropped the push of %s: too many pushes waiting", job[1])
        job[2].set_exception(RuntimeError("too many pushes waiting"))
        return
    waiting.put_nowait(job)


async def _send_in_order(waiting: asyncio.Queue[PushJob]) -> None:
    """Send the handed-over pushes one at a time, so viewers get them in order."""
    while True:
        send_all, what, sent = await waiting.get()
        started = time.monotonic()
        try:
            await asyncio.wait_for(send_all(), PUSH_TIMEOUT_SECONDS)
        except Exception as exc:  # Redis down or restarting: the page will backfill
            logger.warning("Could not push %s", what, exc_info=True)
            sent.set_exception(exc)
        else:
            elapsed = (time.monotonic() - started) * 1000
            logger.debug("pushed %s in %.1f ms", what, elapsed)
            sent.set_result(None)


def _keeps_connections_per_loop(layer: Any) -> bool:
    # channels_redis opens its Redis connections per event loop. async_to_sync runs
    # each call in a new loop, so every push paid for a new connection (measured by
    # bench/: 5.5 ms median, 15 ms p90 per epoch); one long-lived loop keeps them.
    # Other layers (the in-memory one of unit tests) keep the old path.
    return type(layer).__module__.startswith("channels_redis")


_one_loop = False
_loop: asyncio.AbstractEventLoop | None = None
_waiting: asyncio.Queue[PushJob] | None = None
_loop_pid = 0
_loop_lock = threading.Lock()


def push_from_one_loop() -> None:
    """Send this process's pushes from one long-lived event loop from now on.

    For Celery worker processes, which push every epoch (tasks.py turns it on).
    Not for processes that also use the layer from loops of their own, e.g. a
    test that flushes the layer: channels_redis closes every loop's connections
    from the caller's loop, which fails for a loop running on another thread.
    """
    global _one_loop
    _one_loop = True
    # The push loop's thread needs the GIL to send while the training thread
    # computes; by default it could wait up to 5 ms per switch for it.
    sys.setswitchinterval(0.0005)


def _push_loop() -> tuple[asyncio.AbstractEventLoop, asyncio.Queue[PushJob]]:
    """This process's event loop for pushes, running on a daemon thread, and the
    queue of pushes it sends in order.

    Made again after a fork (a Celery prefork child inherits the parent's
    variables but not its threads).
    """
    global _loop, _loop_pid, _waiting
    with _loop_lock:
        if _loop is None or _waiting is None or _loop_pid != os.getpid():
            loop = asyncio.new_event_loop()
            waiting: asyncio.Queue[PushJob] = asyncio.Queue()
            loop.call_soon(lambda: loop.create_task(_send_in_order(waiting)))
            threading.Thread(
                target=loop.run_forever, name="channel-layer-pushes", daemon=True
            ).start()
            _loop, _waiting, _loop_pid = loop, waiting, os.getpid()
        return _loop, _waiting


# ---------------------------------------------------------------- web processes


class Viewer(Protocol):
    """A WebSocket that shows events: the consumer."""

    async def send(self, text_data: str | None = None) -> None: ...

    async def close(self, code: int | None = None) -> None: ...


# How often the process renews its group membership. The Redis layer forgets a
# member after its group_expiry (a day by default), even one that still listens,
# and a flush of the layer forgets every member at once: the process must not go
# deaf for good. Renewing is one ZADD.
RENEW_GROUPS_SECONDS = 15


class LocalFanout:
    """One web process's single listener on the channel layer.

    When every socket joined groups itself, the layer stored, sent and dispatched
    each event once per viewer: 100 viewers of one run cost 100 Redis round trips
    per epoch and held events back for seconds (bench/NOTES.md). Here the process
    joins the events group once, receives each event once and writes its text to
    every local socket of the event's audiences. Events that arrive while it is
    still writing go out together, in order, in one frame per socket,
    {"type": "batch", "events": [...]}, so a burst does not pile up behind itself.
    """

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self.channel: str | None = None
        self.viewers: dict[str, set[Viewer]] = {}
        self.pending: list[tuple[list[str], str]] = []
        self.tasks: list[asyncio.Task] = []
        self.flushing: asyncio.Task | None = None
        self.lock = asyncio.Lock()

    async def join(self, audience: str, viewer: Viewer) -> None:
        async with self.lock:
            if self.channel is None:
                self.channel = await self.layer.new_channel()
                self.tasks = [
                    asyncio.create_task(self._listen(self.channel)),
                    asyncio.create_task(self._renew(self.channel)),
                ]
            # Every new socket renews the membership too (see RENEW_GROUPS_SECONDS).
            await self.layer.group_add(EVENTS_GROUP, self.channel)
            self.viewers.setdefault(audience, set()).add(viewer)

    async def leave(self, audience: str, viewer: Viewer) -> None:
        async with self.lock:
            members = self.viewers.get(audience)
            if members is None:
                return
            members.discard(viewer)
            if not members:
                del self.viewers[audience]

    async def _listen(self, channel: str) -> None:
        while True:
            try:
                message = await self.layer.receive(channel)
            except asyncio.CancelledError:
                raise
            except Exception:
                # Redis went away, and its group membership may be gone with it.
                # Close every socket; pages reconnect with backoff and backfill.
                logger.warning("Channel layer receive failed", exc_info=True)
                await self._reset()
                return
            try:
                self.pending.append((message["audiences"], message["text"]))
            except (KeyError, TypeError):
                logger.warning("Ignored a channel message without audiences/text")
                continue
            if self.flushing is None or self.flushing.done():
                self.flushing = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        while self.pending:
            arrived, self.pending = self.pending, []
            texts: dict[Viewer, list[str]] = {}
            for audiences, text in arrived:
                for audience in audiences:
                    for viewer in self.viewers.get(audience, ()):
                        texts.setdefault(viewer, []).append(text)
            for viewer, viewer_texts in texts.items():
                try:
                    await viewer.send(text_data=_frame(viewer_texts))
                except Exception:  # one broken socket must not starve the rest
                    logger.debug("Could not send to a viewer", exc_info=True)

    async def _renew(self, channel: str) -> None:
        while True:
            await asyncio.sleep(RENEW_GROUPS_SECONDS)
            if self.tasks and self.tasks[0].done():
                # The listener ended without a reset: never leave sockets open
                # that can no longer hear anything.
                logger.warning("Channel layer listener ended; closing its sockets")
                await self._reset()
                return
            try:
                await self.layer.group_add(EVENTS_GROUP, channel)
            except Exception:
                logger.warning("Could not renew the events group", exc_info=True)

    async def _reset(self) -> None:
        async with self.lock:
            viewers = {v for members in self.viewers.values() for v in members}
            self.viewers, self.pending, self.channel = {}, [], None
            for task in self.tasks:
                if task is not asyncio.current_task():
                    task.cancel()
            self.tasks = []
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


# "Try again later": the page reconnects with backoff.
CLOSE_TRY_AGAIN = 1013

# One fan-out per event loop: channel layers hold connections per loop too.
_fanouts: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LocalFanout] = (
    weakref.WeakKeyDictionary()
)


def local_fanout() -> LocalFanout:
    """This process's (this event loop's) fan-out, made on first use."""
    loop = asyncio.get_running_loop()
    fanout = _fanouts.get(loop)
    if fanout is None:
        fanout = _fanouts[loop] = LocalFanout(get_channel_layer())
    return fanout
