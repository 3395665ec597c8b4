"""Saves a worker's trained epochs and announces them, off the training threads.

The training thread used to save each epoch, push it and store its event itself:
two commits and a Redis round trip per epoch, each a wait at the worker's low
priority and a fight for the GIL with the other runs' threads. For models whose
epochs take a few milliseconds that was a third of the run (bench/NOTES.md), and
with ten runs in one worker the waits put the live latency's tail past 100 ms.
Now the training thread hands each epoch to this process's recorder and goes on;
the recorder saves whatever has arrived in one transaction (every run's epochs
and their events, one commit), then pushes them, in order. The database stays the
source of truth: an epoch is pushed only after it is committed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction
from django.utils.timezone import now

from sessions import events

if TYPE_CHECKING:
    from sessions.models import TrainingSession

logger = logging.getLogger(__name__)

T = TypeVar("T")

# The recorder closes its database connection after this long without epochs.
IDLE_SECONDS = 1.0


@dataclass
class _Epoch:
    session: TrainingSession
    epoch: int
    metrics: dict[str, Any]
    duration: float | None
    stats: dict[str, Any] | None
    # When training finished the epoch: its row's created, and the start of the
    # live latency the bench measures (queueing here included).
    finished: datetime = field(default_factory=now)


class RecordingFailed(Exception):
    """The recorder could not save a session's epochs within the retry time."""


class Recorder:
    """One per worker process, shared by its runs (see the module docstring)."""

    def __init__(self) -> None:
        self.queue: list[_Epoch] = []
        self.condition = threading.Condition()
        # Per session: epochs handed over and epochs written (or given up on).
        self.handed: dict[int, int] = {}
        self.written: dict[int, int] = {}
        self.failures: dict[int, BaseException] = {}
        self.thread: threading.Thread | None = None

    def add(
        self,
        session: TrainingSession,
        epoch: int,
        metrics: dict[str, Any],
        duration: float | None,
        stats: dict[str, Any] | None = None,
    ) -> None:
        """Hand one trained epoch over. Raises RecordingFailed when this session's
        earlier epochs could not be saved: the run must not go on unsaved."""
        item = _Epoch(session, epoch, metrics, duration, stats)
        with self.condition:
            self._raise_failure(session.pk)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(
                    target=self._run, name="epoch-recorder", daemon=True
                )
                self.thread.start()
            self.queue.append(item)
            self.handed[session.pk] = self.handed.get(session.pk, 0) + 1
            self.condition.notify_all()

    def flush(self, session: TrainingSession) -> None:
        """Wait until every epoch of this session handed over so far is saved and
        pushed; raises RecordingFailed if they could not be saved."""
        key = session.pk
        with self.condition:
            self.condition.wait_for(
                lambda: self.written.get(key, 0) >= self.handed.get(key, 0)
            )
            self.handed.pop(key, None)
            self.written.pop(key, None)
            self._raise_failure(key, forget=True)

    def _raise_failure(self, session_id: int, forget: bool = False) -> None:
        failure = (
            self.failures.pop(session_id, None)
            if forget
            else self.failures.get(session_id)
        )
        if failure is not None:
            raise RecordingFailed(str(failure)) from failure

    def _run(self) -> None:
        while True:
            with self.condition:
                if not self.condition.wait_for(lambda: self.queue, IDLE_SECONDS):
                    # Between runs: give the database connection back.
                    connection.close()
                    self.condition.wait_for(lambda: self.queue)
                batch, self.queue = self.queue, []
            try:
                self._save_and_push(batch)
            except Exception as exc:  # out of retries: fail these runs
                logger.exception("Could not save %d epochs", len(batch))
                with self.condition:
                    for item in batch:
                        self.failures.setdefault(item.session.pk, exc)
            with self.condition:
                for item in batch:
                    key = item.session.pk
                    self.written[key] = self.written.get(key, 0) + 1
                self.condition.notify_all()

    def _save_and_push(self, batch: list[_Epoch]) -> None:
        # Epochs of a session whose earlier epochs failed are dropped: that run
        # is failing anyway, and must not get a gap-free look.
        with self.condition:
            batch = [item for item in batch if item.session.pk not in self.failures]
        if not batch:
            return
        pushed = retrying(lambda: self._save(batch), f"saving {len(batch)} epochs")
        for session, event in pushed:
            events.publish(session, event)

    def _save(
        self, batch: list[_Epoch]
    ) -> list[tuple[TrainingSession, events.TrainingEvent]]:
        announced = []
        with transaction.atomic():
            for item in batch:
                row = item.session.record_epoch(
                    item.epoch, item.metrics, item.duration, created=item.finished
                )
                event = events.epoch_event(item.session, row, item.stats)
                announced.append((item.session, event))
            events.store_events(announced)
        return announced


def retrying(write: Callable[[], T], what: str) -> T:
    """Run a database write, retrying while the database is briefly unavailable
    or locked, for up to MLTRACK_DB_RETRY_SECONDS. A connection that failed is
    closed, so the next attempt opens a fresh one."""
    deadline = time.monotonic() + settings.MLTRACK_DB_RETRY_SECONDS
    delay = 0.1
    while True:
        try:
            return write()
        except (OperationalError, InterfaceError) as exc:
            if time.monotonic() + delay > deadline:
                raise
            logger.warning("%s failed (%s); retrying in %.1f s", what, exc, delay)
            connection.close()
            time.sleep(delay)  # back off while the database recovers
            delay = min(delay * 2, 5.0)


_recorders: dict[int, Recorder] = {}
_recorders_lock = threading.Lock()


def recorder() -> Recorder:
    """This process's recorder (a forked child makes its own)."""
    pid = os.getpid()
    found = _recorders.get(pid)
    if found is None:
        with _recorders_lock:
            found = _recorders.setdefault(pid, Recorder())
    return found
