from __future__ import annotations

import logging
import threading
import time
import traceback
from typing import Any

import psutil
from celery import shared_task
from celery.signals import worker_process_init
from django.db import close_old_connections, connection

from sessions import events
from sessions.models import TrainingSession

logger = logging.getLogger(__name__)

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


class _Progress:
    """Throughput, time left and the worker's resource use, sent with each epoch."""

    def __init__(self, total_epochs: int) -> None:
        self.total = total_epochs
        self.started = time.monotonic()
        self.process = psutil.Process()
        self.process.cpu_percent()  # first call primes the counter

    def stats(self, epoch: int) -> dict[str, Any]:
        elapsed = time.monotonic() - self.started
        per_epoch = elapsed / epoch if epoch else None
        return {
            "elapsedSeconds": round(elapsed, 3),
            "epochsPerMinute": round(60 / per_epoch, 2) if per_epoch else None,
            "etaSeconds": round(per_epoch * (self.total - epoch), 1)
            if per_epoch
            else None,
            "cpuPercent": self.process.cpu_percent(),
            "memoryMb": round(self.process.memory_info().rss / 2**20, 1),
        }


@worker_process_init.connect
def _push_from_one_loop(**kwargs: Any) -> None:
    # A worker process pushes every epoch: keep its Redis connections (events.py).
    events.push_from_one_loop()


@shared_task(bind=True)
def run_training(self: Any, session_id: int) -> str:
    """Train one session, saving and pushing every epoch. Returns a summary line."""
    from sessions import training  # keeps scikit-learn out of the web process

    close_old_connections()
    session = TrainingSession.objects.select_related("owner").get(pk=session_id)
    if not session.mark_running(self.request.id or ""):
        return f"session {session_id} not started: it was {session.status}"
    events.push_status(session, "training_started")

    progress = _Progress(session.total_epochs or 0)
    heartbeat = _Heartbeat(session)
    heartbeat.start()

    def on_epoch(result: training.EpochResult) -> None:
        row = session.record_epoch(result.epoch, result.metrics, result.duration)
        events.push_epoch(session, row, progress.stats(result.epoch))

    def should_stop() -> bool:
        return session.current_status() == TrainingSession.Status.STOPPING

    try:
        result = training.fit(
            session.model_type,
            session.dataset,
            session.params,
            session.total_epochs or 0,
            on_epoch=on_epoch,
            should_stop=should_stop,
        )
    except training.TrainingError as exc:
        session.mark_failed(str(exc), traceback.format_exc())
    except Exception as exc:
        logger.exception("training session %s crashed", session_id)
        session.mark_failed(
            f"Training crashed: {type(exc).__name__}: {exc}", traceback.format_exc()
        )
    else:
        if result.stopped:
            session.mark_stopped(result.report)
        else:
            session.mark_completed(result.report)
    finally:
        heartbeat.done.set()
        heartbeat.join()
    events.push_status(session)
    return f"session {session_id} {session.status} after {session.current_epoch} epochs"
