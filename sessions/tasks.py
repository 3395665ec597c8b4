from __future__ import annotations

import collections
import ctypes
import logging
import threading
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

import psutil
from celery import shared_task
from django.conf import settings
from django.db import (
    InterfaceError,
    OperationalError,
    close_old_connections,
    connection,
)
from django.utils.timezone import now

from sessions import diagnostics, events, metrics
from sessions.models import TrainedEpoch, TrainingSession

logger = logging.getLogger(__name__)

T = TypeVar("T")

HEARTBEAT_SECONDS = 5


class _Heartbeat(threading.Thread):
    """Touches the session's heartbeat while an epoch runs, so a long epoch is not
    mistaken for a dead worker. Stops with the task."""

    def __init__(self, session: TrainingSession) -> None:
        super().__init__(daemon=True, name=f"heartbeat-{session.pk}")
        self.session = session
        self.done = threading.Event()

    def run(self) -> None:
        try:
            while not self.done.wait(HEARTBEAT_SECONDS):
                try:
                    self.session.beat()
                except Exception:
                    logger.warning(
                        "heartbeat failed for %s", self.session.pk, exc_info=True
                    )
        finally:
            connection.close()


# How often the worker's CPU and memory use are read for the progress events:
# reading them (psutil, /proc) cost ~0.2 ms of every 5 ms epoch, and they move
# slowly.
RESOURCE_READ_SECONDS = 1.0


class _Progress:
    """Throughput, time left and the worker's resource use, sent with each epoch."""

    def __init__(self, total_epochs: int) -> None:
        self.total = total_epochs
        self.started = time.monotonic()
        self.process = psutil.Process()
        self.process.cpu_percent()  # first call primes the counter
        self.resources: dict[str, float] = {}
        self.resources_read_at = -RESOURCE_READ_SECONDS

    def stats(self, epoch: int) -> dict[str, Any]:
        clock = time.monotonic()
        elapsed = clock - self.started
        if clock - self.resources_read_at >= RESOURCE_READ_SECONDS:
            self.resources = {
                "cpuPercent": self.process.cpu_percent(),
                "memoryMb": round(self.process.memory_info().rss / 2**20, 1),
            }
            self.resources_read_at = clock
        per_epoch = elapsed / epoch if epoch else None
        return {
            "elapsedSeconds": round(elapsed, 3),
            "epochsPerMinute": round(60 / per_epoch, 2) if per_epoch else None,
            "etaSeconds": round(per_epoch * (self.total - epoch), 1)
            if per_epoch
            else None,
            **self.resources,
        }


# How often a run's session row gets its counters (current_epoch, final_metrics,
# ...) while it trains. The epoch rows, written as epochs are saved, are what
# pages and the API read for the history; the counters lag by at most this and
# are written with the final status. On SQLite a save without the session's
# UPDATE is one statement instead of four, and with 10 runs in a worker each
# statement waits for the GIL behind the other training threads (bench/NOTES.md).
PROGRESS_WRITE_SECONDS = 0.25


# How long a trained epoch may wait to be pushed together with the epochs after
# it. A push costs about the same for a few epochs as for one (the events' JSON,
# a send, and the caches they leave cold): on a 6 ms epoch that cost, paid every
# epoch, was a large part of the tracking overhead (bench/NOTES.md). A page draws
# one frame every ~17 ms at best, so epochs that come faster than that reach it
# a frame or so later and nothing is seen to lag; an epoch that takes longer
# than this is pushed the moment it ends.
PUSH_BATCH_SECONDS = 0.02
# At most this many epochs in one push (a tiny model's epochs may take 0.1 ms).
PUSH_BATCH_EPOCHS = 100
# How long a pushed epoch may wait to be saved with the epochs after it. The
# save's statement and commit cost the same for one epoch as for forty, and
# saved every PUSH_BATCH_SECONDS they were ~0.7 points of logistic/iris's ~3.3 %
# between epochs (bench/NOTES.md, session 19). Viewers do not wait for it: they
# get the push, and a page that finds a gap (events dropped, a page opened mid
# run) backfills from the database until the gap is filled (static/js/live.js).
# A worker killed outright loses at most this much of its run's epochs.
EPOCH_SAVE_SECONDS = 0.25


class _EpochSaver:
    """Pushes a run's epochs as they are trained, several in one push when they
    come faster than PUSH_BATCH_SECONDS, and saves them every
    EPOCH_SAVE_SECONDS.

    Each epoch keeps the time it was trained, and its own event. After each
    epoch it guesses that the next will take as long as this one did: if
    waiting for it would keep the oldest unpushed epoch back longer than
    PUSH_BATCH_SECONDS, it pushes now, and if it would keep the oldest unsaved
    one back longer than EPOCH_SAVE_SECONDS, it saves too (an epoch that takes
    longer than that is saved as it ends). The first epoch is pushed and saved at
    once, so a new run shows up the moment it has something to show. An
    epoch's event goes to the event table after the epoch is saved. flush()
    pushes and saves the rest; the task calls it before the run's final
    status, whatever ended it, so whoever sees that status finds every epoch.
    """

    def __init__(
        self, session: TrainingSession, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.session = session
        self.clock = clock
        self.pending: list[tuple[Any, datetime, dict[str, Any]]] = []
        self.oldest = 0.0  # when the oldest unpushed epoch ended (monotonic)
        self.previous: float | None = None  # when the last epoch ended
        self.unsaved: list[TrainedEpoch] = []  # pushed, not saved yet
        self.unsaved_events: list[str] = []  # their events, for the event table
        self.unsaved_since = 0.0  # when the oldest of them ended (monotonic)

    def add(
        self, result: Any, stats: dict[str, Any], finished: datetime | None = None
    ) -> None:
        """`finished`: when the epoch ended (now, if not given)."""
        clock = self.clock()
        if not self.pending:
            self.oldest = clock
        self.pending.append((result, finished or now(), stats))
        step = None if self.previous is None else clock - self.previous
        self.previous = clock
        if (
            step is None
            or clock + step - self.oldest > PUSH_BATCH_SECONDS
            or len(self.pending) >= PUSH_BATCH_EPOCHS
        ):
            self._push()
            # The same guess for the save: an epoch that waited for the next
            # would be kept unsaved too long. The first is saved at once.
            if step is None or clock + step - self.unsaved_since > EPOCH_SAVE_SECONDS:
                self._save()

    def flush(self) -> None:
        """Push and save every epoch not yet pushed and saved; raises if the
        database stays unavailable past MLTRACK_DB_RETRY_SECONDS (the epochs
        not saved are lost)."""
        self._push()
        self._save()

    def _push(self) -> None:
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        trained = [
            (result.epoch, result.metrics, result.duration, finished)
            for result, finished, _ in batch
        ]
        if not self.unsaved:
            self.unsaved_since = self.oldest
        self.session.count_trained(trained)
        self.unsaved += trained
        self.unsaved_events += events.push_trained(
            self.session, trained, [epoch_stats for *_, epoch_stats in batch]
        )

    def _save(self) -> None:
        if not self.unsaved:
            return
        trained, texts = self.unsaved, self.unsaved_events
        self.unsaved, self.unsaved_events = [], []
        session = self.session
        _retrying(
            lambda: session.record_trained(trained, PROGRESS_WRITE_SECONDS),
            f"saving epochs {trained[0][0]}-{trained[-1][0]} of session {session.pk}",
        )
        events.store_trained(session, texts)

    def flush_or_log(self) -> None:
        """flush() on the way to a failed run's final status: that status must
        be written even if the epochs cannot be."""
        try:
            self.flush()
        except Exception:
            logger.exception("could not save the last epochs of %s", self.session.pk)


# How long a run may keep computing, at its chunk boundaries, while another
# run of the same worker process waits for a turn (see TrainingTurns).
TURN_SECONDS = 0.05


class TrainingTurns:
    """The runs one worker process trains take turns at computing: at most
    `slots` compute at a time, and the others wait at an epoch boundary (or,
    after TURN_SECONDS, at a chunk boundary of a long epoch), first come, first
    served. Saving and pushing an epoch happen outside a turn.

    Why: every run is a thread of one process, and scikit-learn's epochs are
    mostly Python, so they share one GIL. Ten runs computing at once made each
    thread give the GIL up every switch interval and wait behind nine others for
    it, at every one of the ~10 points where an epoch's save lets it go: 17 ms
    from an epoch's end to its push (median), and ~2.7x the CPU for the same
    epochs. With one turn, 10 logistic/iris runs took 37 s of CPU instead of 80
    and their events reached a viewer in 2.5 ms instead of 19 (bench/NOTES.md,
    session 15); 4 MLP runs finished in 5.2 s instead of 8.5-9.1, 4 random
    forests in 8.8 s instead of 9.5. Every run still progresses; long epochs
    take turns at their chunks, so a quick run does not wait a whole long epoch.
    """

    def __init__(self, slots: int, turn_seconds: float = TURN_SECONDS) -> None:
        self.lock = threading.Lock()
        self.free = slots
        self.turn_seconds = turn_seconds
        self.waiting: collections.deque[threading.Lock] = collections.deque()
        self.taken_at = threading.local()

    def take(self) -> None:
        """Wait for a turn (in order of asking) and take it."""
        with self.lock:
            if self.free and not self.waiting:
                self.free -= 1
                self.taken_at.value = time.monotonic()
                return
            turn = threading.Lock()
            turn.acquire()
            self.waiting.append(turn)
        turn.acquire()  # give_back() hands the turn over by releasing it
        self.taken_at.value = time.monotonic()

    def give_back(self) -> None:
        """End this thread's turn: the longest waiting run gets it."""
        with self.lock:
            if self.waiting:
                self.waiting.popleft().release()
            else:
                self.free += 1

    def pass_if_due(self) -> None:
        """At a chunk boundary: if this turn has lasted TURN_SECONDS and another
        run waits, let it have a turn and wait for the next."""
        if not self.waiting:
            return
        if time.monotonic() - getattr(self.taken_at, "value", 0.0) < self.turn_seconds:
            return
        self.give_back()
        self.take()


_turns: TrainingTurns | None = None
_turns_lock = threading.Lock()


def training_turns() -> TrainingTurns:
    """This worker process's turns, made on first use from the settings."""
    global _turns
    with _turns_lock:
        if _turns is None:
            _turns = TrainingTurns(settings.MLTRACK_WORKER_TRAINING_SLOTS)
        return _turns


# How stale the status behind should_stop may be: a stop request (or a session
# failed as lost) is seen within this, at the next epoch boundary or chunk.
STATUS_CHECK_SECONDS = 0.2


class _StopCheck:
    """should_stop for training.fit: reads the session's status at most every
    STATUS_CHECK_SECONDS rather than at every epoch and chunk, since a query per
    epoch is a real share of a small model's epoch of a few milliseconds."""

    def __init__(self, session: TrainingSession, turns: TrainingTurns) -> None:
        self.session = session
        self.status = session.status
        self.read_at = time.monotonic()
        self.turns = turns

    def __call__(self) -> bool:
        # Called between epochs and between chunks of a long epoch.
        self.turns.pass_if_due()
        if time.monotonic() - self.read_at >= STATUS_CHECK_SECONDS:
            self.status = _retrying(
                self.session.current_status, f"reading session {self.session.pk}"
            )
            self.read_at = time.monotonic()
        # Not only "stopping": a worker that froze past the heartbeat timeout finds
        # its session failed as lost, and must not go on training it.
        return self.status != TrainingSession.Status.RUNNING


def _retrying(write: Callable[[], T], what: str) -> T:
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


# max_retries=None on the task: retry(max_retries=None) would mean "the default, 3",
# and a session waiting for a slot must be able to wait as long as it takes.
@shared_task(bind=True, max_retries=None)
def run_training(self: Any, session_id: int) -> str:
    """Train one session, saving and pushing every epoch. Returns a summary line."""
    from sessions import training  # keeps scikit-learn out of the web process

    close_old_connections()
    session = TrainingSession.objects.select_related("owner").filter(pk=session_id)
    session = session.first()
    if session is None:
        return f"session {session_id} not started: it was deleted"
    # A redelivered message (acks_late) for a session that already finished, was
    # stopped or was failed as lost must not train it again: only a queued
    # session can start.
    if session.status != TrainingSession.Status.QUEUED:
        return f"session {session_id} not started: it was {session.status}"
    if not session.start_if_slot_free(
        self.request.id or "", settings.MLTRACK_MAX_CONCURRENT_RUNS
    ):
        if session.status != TrainingSession.Status.QUEUED:
            return f"session {session_id} not started: it was {session.status}"
        # Every slot is taken: wait as queued and look again soon. The retry is a
        # new message, so this worker is free for other work meanwhile.
        raise self.retry(countdown=settings.MLTRACK_QUEUE_RETRY_SECONDS)
    events.push_started(session)

    progress = _Progress(session.total_epochs or 0)
    heartbeat = _Heartbeat(session)
    heartbeat.start()

    losses = diagnostics.LossWatch()

    saver = _EpochSaver(session)
    turns = training_turns()

    def on_epoch(result: training.EpochResult) -> None:
        finished = now()
        turns.give_back()  # the save and push need no turn
        try:
            # The session keeps every warning seen; the event also says which
            # hold now.
            current = losses.add(
                result.metrics["train_loss"], result.metrics["val_loss"]
            )
            flagged = diagnostics.merge(session.diagnostics, current)
            if flagged != session.diagnostics:
                _retrying(
                    lambda: session.set_diagnostics(flagged), "saving diagnostics"
                )
            stats = progress.stats(result.epoch)
            stats["diagnostics"] = current
            saver.add(result, stats, finished)
        finally:
            turns.take()

    def fit() -> training.FitResult:
        turns.take()
        try:
            return training.fit(
                session.model_type,
                session.dataset,
                session.params,
                session.total_epochs or 0,
                on_epoch=on_epoch,
                should_stop=_StopCheck(session, turns),
                csv_path=session.data_file.path if session.data_file else None,
                target_column=session.target_column or None,
            )
        finally:
            turns.give_back()

    try:
        result = fit()
        saver.flush()
    except training.TrainingError as exc:
        reason, trace = str(exc), traceback.format_exc()
        saver.flush_or_log()
        _retrying(lambda: session.mark_failed(reason, trace), "failing the session")
    except Exception as exc:
        logger.exception("training session %s crashed", session_id)
        message = f"Training crashed: {type(exc).__name__}: {exc}"
        trace = traceback.format_exc()
        saver.flush_or_log()
        _retrying(lambda: session.mark_failed(message, trace), "failing the session")
    else:
        if result.stopped:
            _retrying(lambda: session.mark_stopped(result.report), "stopping")
        else:
            _retrying(lambda: session.mark_completed(result.report), "completing")
    finally:
        heartbeat.done.set()
        heartbeat.join()
    events.push_status(session)
    # After the final status, so neither the run's time nor its viewers wait.
    store_chart_if_long(session)
    release_freed_memory()
    return f"session {session_id} {session.status} after {session.current_epoch} epochs"


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        # The symbols the interpreter itself was linked with, libc's among them.
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return None


_trim = _malloc_trim()


def release_freed_memory() -> None:
    """Give the memory a finished run freed back to the system. glibc keeps
    freed blocks in its heaps for reuse, and after a run of each model type a
    worker held ~12 MB that nothing used (random forests' trees, gradient
    boosting's stages); malloc_trim returns the free pages (bench/NOTES.md,
    session 16). A few milliseconds, after the run's final status."""
    if _trim is not None:
        _trim(0)


def store_chart_if_long(session: TrainingSession) -> None:
    """Thin a finished run's chart now if it is long enough to be thinned, so its
    first reader gets a stored answer instead of reading every epoch (~60 ms for
    20,000 on SQLite, bench/NOTES.md). Runs in the worker; a failure only leaves
    the work to the first reader."""
    if session.current_epoch <= metrics.CHART_MAX_POINTS or session.is_active:
        return
    try:
        metrics.chart_json(session, max_points=metrics.CHART_MAX_POINTS)
    except Exception:
        logger.warning("could not store the chart of %s", session.pk, exc_info=True)


@shared_task
def store_chart(session_id: int) -> None:
    """store_chart_if_long for a run logged through the API, once it finishes."""
    session = TrainingSession.objects.filter(pk=session_id).first()
    if session is not None:
        store_chart_if_long(session)


def fail_lost_sessions() -> list[TrainingSession]:
    """Fail every running session whose worker stopped sending heartbeats, keeping
    its epochs, and tell its viewers. Safe to run in several workers at once: each
    session is failed by one conditional UPDATE."""
    silent_for = timedelta(seconds=settings.MLTRACK_HEARTBEAT_TIMEOUT)
    failed = []
    for session in TrainingSession.objects.lost(silent_for).select_related("owner"):
        if session.mark_lost(silent_for):
            logger.warning("session %s failed: worker lost", session.pk)
            events.push_status(session, "training_failed")
            failed.append(session)
    return failed


class _LostWorkerWatch(threading.Thread):
    """Runs fail_lost_sessions() every MLTRACK_LOST_CHECK_SECONDS in a worker."""

    def __init__(self) -> None:
        super().__init__(daemon=True, name="lost-worker-watch")

    def run(self) -> None:
        while True:
            time.sleep(settings.MLTRACK_LOST_CHECK_SECONDS)
            try:
                close_old_connections()
                fail_lost_sessions()
            except Exception:  # the database restarting must not end the watch
                logger.warning("lost-worker check failed", exc_info=True)
            finally:
                connection.close()


_watch_lock = threading.Lock()
_watch: _LostWorkerWatch | None = None


def start_lost_worker_watch() -> bool:
    """Start the watch once per process; return False if it was already running."""
    global _watch
    with _watch_lock:
        if _watch is not None and _watch.is_alive():
            return False
        _watch = _LostWorkerWatch()
        _watch.start()
        return True
