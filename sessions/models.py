from __future__ import annotations

import functools
import hashlib
import hmac
import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import PurePath
from typing import Any

import orjson
from django.conf import settings
from django.db import (
    DEFAULT_DB_ALIAS,
    NotSupportedError,
    connection,
    connections,
    models,
    transaction,
)
from django.db.models.signals import pre_delete
from django.dispatch import receiver
from django.urls import reverse
from django.utils.timezone import now

from sessions import catalog
from sessions.training import METRIC_NAMES

# The trainer's metric names are the EpochMetric columns (training.py imports
# scikit-learn only inside its functions, so this import stays light).
STANDARD_METRICS = METRIC_NAMES
_STANDARD_SET = frozenset(STANDARD_METRICS)

# An epoch the worker trained: (epoch, metrics, duration in seconds, when it ended).
TrainedEpoch = tuple[int, dict[str, Any], float | None, datetime]


def row_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """An epoch's metrics as its row gives them back (EpochMetric.metrics): every
    standard metric, None where missing, then the others."""
    values = {name: metrics.get(name) for name in STANDARD_METRICS}
    values.update(
        (name, value) for name, value in metrics.items() if name not in _STANDARD_SET
    )
    return values


class _PreparedCursor:
    """A PostgreSQL cursor whose statements the server parses and plans once per
    connection (psycopg's prepared statements, server-side binding).

    Django's cursors bind parameters on the client and never prepare (its
    default, kept for everything else: connection poolers, the ORM's queries).
    The run-logging API and the worker run the same few statements over and
    over, where planning was most of their cost: the token's lookup took 0.31
    ms unprepared and 0.08 ms prepared, and a log call's four statements
    ~2.5 ms of its ~5 ms in process (bench/NOTES.md).
    """

    def __init__(self, connection: Any) -> None:
        import psycopg

        self.connection = connection
        # Django's own cursor first: it opens the connection and runs the health
        # check, as any query would.
        self.django_cursor = connection.cursor()
        self.cursor = psycopg.Cursor(connection.connection)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        with self.connection.wrap_database_errors:
            self.cursor.execute(sql, params, prepare=True)

    def fetchone(self) -> Any:
        with self.connection.wrap_database_errors:
            return self.cursor.fetchone()

    def fetchall(self) -> list[Any]:
        with self.connection.wrap_database_errors:
            return self.cursor.fetchall()

    @property
    def rowcount(self) -> int:
        return self.cursor.rowcount

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cursor.close()
        self.django_cursor.close()


def _hot_cursor(connection: Any) -> Any:
    """A cursor for a statement run on every API call or worker epoch: prepared
    on PostgreSQL (_PreparedCursor), Django's own elsewhere."""
    if connection.vendor == "postgresql":
        connection.ensure_connection()
        if connection.connection.prepare_threshold is not None:
            return _PreparedCursor(connection)
    return connection.cursor()


_readers = threading.local()


def _reader(model: type[models.Model], connection: Any) -> tuple[str, Any]:
    """(the model's columns for a SELECT, a function making an instance of the
    model from a row of them), converted as the ORM converts them.

    For the run-logging API's per-request lookups (token, session), run as
    cached raw SQL: the ORM compiled each query anew, ~0.4 ms of a ~2 ms
    single-epoch log call (bench/NOTES.md). The converters are the backend's
    and the fields' own, so an instance read here equals one the ORM reads.
    Kept per thread: a converter may be bound to its thread's connection.
    """
    cache = getattr(_readers, "by_key", None)
    if cache is None:
        cache = _readers.by_key = {}
    key = (model, connection.alias)
    found = cache.get(key)
    if found is None:
        table = model._meta.db_table
        fields = model._meta.concrete_fields
        columns = [field.get_col(table) for field in fields]
        converters = [
            (
                column,
                connection.ops.get_db_converters(column)
                + column.get_db_converters(connection),
            )
            for column in columns
        ]
        names = [field.attname for field in fields]
        alias = connection.alias

        def make(values: Sequence[Any]) -> models.Model:
            converted = []
            for value, (column, functions) in zip(values, converters, strict=True):
                for function in functions:
                    value = function(value, column, connection)
                converted.append(value)
            return model.from_db(alias, names, converted)

        select = ", ".join(f'"{table}"."{field.column}"' for field in fields)
        found = cache[key] = (select, make)
    return found


class TrainingSessionQuerySet(models.QuerySet):
    def for_user(self, user: Any) -> TrainingSessionQuerySet:
        """Sessions this user may see: staff see every session, others their own."""
        if user.is_staff:
            return self
        return self.filter(owner=user)

    def owned(self, pk: int, owner_id: int) -> TrainingSession | None:
        """This owner's session `pk`, or None.

        What filter(pk=..., owner_id=...).first() reads, as cached raw SQL: the
        run-logging API reads its run on every call (_reader)."""
        db = connections[self.db]
        select, make = _reader(TrainingSession, db)
        with _hot_cursor(db) as cursor:
            cursor.execute(
                f'SELECT {select} FROM "{TrainingSession._meta.db_table}"'
                ' WHERE "id" = %s AND "owner_id" = %s',
                [pk, owner_id],
            )
            row = cursor.fetchone()
        return None if row is None else make(row)

    def active(self) -> TrainingSessionQuerySet:
        return self.filter(status__in=TrainingSession.ACTIVE_STATUSES)

    def finished(self) -> TrainingSessionQuerySet:
        return self.exclude(status__in=TrainingSession.ACTIVE_STATUSES)

    def search(self, text: str) -> TrainingSessionQuerySet:
        """Sessions whose id, name, model type or data set matches `text`."""
        matches = (
            models.Q(name__icontains=text)
            | models.Q(model_type__icontains=text)
            | models.Q(dataset__icontains=text)
        )
        if text.lstrip("#").isdigit() and len(text) < 18:
            matches |= models.Q(pk=int(text.lstrip("#")))
        return self.filter(matches)

    def start_external(
        self,
        owner: Any,
        name: str,
        params: dict[str, Any],
        total_epochs: int | None,
        dataset: str,
    ) -> TrainingSession:
        """A run whose training loop runs elsewhere and logs through the API: it is
        running from the start, and its heartbeat is the client's."""
        moment = now()
        return self.create(
            owner=owner,
            name=name,
            model_type=catalog.EXTERNAL_MODEL_TYPE,
            dataset=dataset,
            params=params,
            total_epochs=total_epochs,
            status=TrainingSession.Status.RUNNING,
            started_at=moment,
            heartbeat_at=moment,
        )

    def lost(self, silent_for: timedelta) -> TrainingSessionQuerySet:
        """Running sessions whose worker has not sent a heartbeat for `silent_for`."""
        cutoff = now() - silent_for
        return self.filter(
            status__in=(
                TrainingSession.Status.RUNNING,
                TrainingSession.Status.STOPPING,
            ),
            heartbeat_at__lt=cutoff,
        )


class TrainingSession(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        STOPPING = "stopping"
        COMPLETED = "completed"
        FAILED = "failed"
        STOPPED = "stopped"

    ACTIVE_STATUSES = (Status.QUEUED, Status.RUNNING, Status.STOPPING)

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.CASCADE, related_name="training_sessions"
    )
    name = models.CharField(max_length=200, blank=True)
    model_type = models.CharField(max_length=32)
    dataset = models.CharField(max_length=32)
    params = models.JSONField(default=dict, blank=True)
    status = models.CharField(
        max_length=16, choices=Status.choices, default=Status.QUEUED
    )
    current_epoch = models.PositiveIntegerField(default=0)
    total_epochs = models.PositiveIntegerField(null=True, blank=True)
    created = models.DateTimeField(default=now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    task_id = models.CharField(max_length=64, blank=True)
    error = models.TextField(blank=True)
    traceback = models.TextField(blank=True)
    final_metrics = models.JSONField(default=dict, blank=True)
    report = models.JSONField(default=dict, blank=True)
    best_val_accuracy = models.FloatField(null=True, blank=True)
    # Warnings about the run that do not stop it, e.g. "overfitting", "plateau".
    diagnostics = models.JSONField(default=list, blank=True)
    # An uploaded CSV data set (dataset "csv"); stored under MEDIA_ROOT, never served.
    data_file = models.FileField(upload_to="uploads/%Y/%m/", blank=True)
    target_column = models.CharField(max_length=200, blank=True)

    objects = TrainingSessionQuerySet.as_manager()

    class Meta:
        ordering = ["-created", "-id"]
        indexes = [
            # The history table: one user's sessions, newest first.
            models.Index(fields=["owner", "-created"], name="session_owner_created"),
            # The lost-worker check: running sessions by heartbeat age.
            models.Index(
                fields=["status", "heartbeat_at"], name="session_status_heartbeat"
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.model_type} on {self.dataset} ({self.status})"

    def get_absolute_url(self) -> str:
        return reverse("sessions:detail", args=[self.pk])

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE_STATUSES

    @property
    def progress(self) -> float:
        if self.status == self.Status.COMPLETED:
            return 100.0
        if not self.total_epochs:
            return 0.0
        return round(min(100.0, 100.0 * self.current_epoch / self.total_epochs), 1)

    @property
    def queue_position(self) -> int | None:
        """1 for the next queued session to start, None once it is not queued.

        One COUNT on the status index, and only for queued sessions."""
        if self.status != self.Status.QUEUED:
            return None
        older = TrainingSession.objects.filter(status=self.Status.QUEUED).filter(
            models.Q(created__lt=self.created)
            | models.Q(created=self.created, pk__lt=self.pk)
        )
        return older.count() + 1

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at or now()
        return round((end - self.started_at).total_seconds(), 3)

    def as_dict(self) -> dict[str, Any]:
        """The SESSION object of the API and of every WebSocket event."""
        return {
            "id": self.pk,
            "name": self.name,
            "owner": self.owner_id,
            "modelType": self.model_type,
            "dataset": self.dataset,
            "status": self.status,
            "currentEpoch": self.current_epoch,
            "totalEpochs": self.total_epochs,
            "progress": self.progress,
            "createdAt": _iso(self.created),
            "startedAt": _iso(self.started_at),
            "finishedAt": _iso(self.finished_at),
            "heartbeatAt": _iso(self.heartbeat_at),
            "durationSeconds": self.duration_seconds,
            "params": self.params,
            "finalMetrics": self.final_metrics,
            "bestValAccuracy": self.best_val_accuracy,
            "report": self.report,
            "diagnostics": self.diagnostics,
            "queuePosition": self.queue_position,
            "csvFile": PurePath(self.data_file.name).name if self.data_file else None,
            "targetColumn": self.target_column or None,
            "error": self.error,
            "url": self.get_absolute_url(),
        }

    def as_progress_dict(self) -> dict[str, Any]:
        """as_dict() for a running session's epoch events: the keys an epoch moves
        read afresh, the others copied from this instance's first call. The worker
        sends one per epoch, where as_dict() (its URL, file name and dates) cost
        ~0.1 ms of a 5 ms epoch (bench/NOTES.md)."""
        first = self.__dict__.get("_progress_dict")
        if first is None or first["status"] != self.status:
            first = self._progress_dict = self.as_dict()
            return dict(first)
        return {
            **first,
            "currentEpoch": self.current_epoch,
            "progress": self.progress,
            "heartbeatAt": _iso(self.heartbeat_at),
            "durationSeconds": self.duration_seconds,
            "finalMetrics": self.final_metrics,
            "bestValAccuracy": self.best_val_accuracy,
            "diagnostics": self.diagnostics,
        }

    def _transition(self, from_statuses: tuple[str, ...], **changes: Any) -> bool:
        """Apply `changes` only if the row still has one of `from_statuses`.

        A conditional UPDATE, so a worker and a stop request racing on the same row
        cannot overwrite each other. Refreshes this instance either way.
        """
        # The counters record_trained kept back go in the same UPDATE: the
        # worker's final status then costs one statement, not two, inside the
        # run's timed span (bench/NOTES.md, session 18). If the status moved
        # meanwhile (a run failed as lost), they are written anyway.
        progress = self._unsaved_progress()
        updated = TrainingSession.objects.filter(
            pk=self.pk, status__in=from_statuses
        ).update(**progress, **changes)
        if not updated:
            self.save_progress()
        elif progress:
            self._progress_saved()
        self.refresh_from_db()
        return bool(updated)

    def mark_running(self, task_id: str) -> bool:
        moment = now()
        return self._transition(
            (self.Status.QUEUED,),
            status=self.Status.RUNNING,
            task_id=task_id or "",
            started_at=moment,
            heartbeat_at=moment,
        )

    def start_if_slot_free(self, task_id: str, max_running: int) -> bool:
        """Mark this queued session running unless `max_running` sessions already
        train. The count and the update happen under one lock (SQLite: the
        IMMEDIATE transaction; PostgreSQL: an advisory lock), so two workers
        cannot both take the last slot."""
        with transaction.atomic():
            if connection.vendor == "postgresql":
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_SLOT_LOCK])
            running = TrainingSession.objects.filter(
                status__in=(self.Status.RUNNING, self.Status.STOPPING)
            ).count()
            if running >= max_running:
                self.refresh_from_db()
                return False
            return self.mark_running(task_id)

    def mark_lost(self, silent_for: timedelta) -> bool:
        """Fail a running session whose heartbeat is older than `silent_for`.

        The heartbeat is part of the condition, so a session that beat a moment
        ago is left alone even if it was listed as lost."""
        updated = TrainingSession.objects.filter(
            pk=self.pk,
            status__in=(self.Status.RUNNING, self.Status.STOPPING),
            heartbeat_at__lt=now() - silent_for,
        ).update(
            status=self.Status.FAILED,
            finished_at=now(),
            error=(
                f"Worker lost: no heartbeat for {silent_for.total_seconds():.0f} s "
                "(the worker process died or lost its connection). The finished "
                "epochs are kept; start a new session to train again."
            ),
        )
        if updated:
            # The worker writes the counters less often than its epochs
            # (record_epoch's progress_every) and died before writing the last
            # ones: the stored epochs say how far it got.
            last = self.epochs.order_by("-epoch").first()
            if last is not None:
                best = self.epochs.aggregate(best=models.Max("val_accuracy"))
                TrainingSession.objects.filter(pk=self.pk).update(
                    current_epoch=last.epoch,
                    final_metrics=last.metrics,
                    best_val_accuracy=best["best"],
                )
        self.refresh_from_db()
        return bool(updated)

    def set_diagnostics(self, diagnostics: list[dict[str, Any]]) -> None:
        self.diagnostics = diagnostics
        self.save(update_fields=["diagnostics"])

    def mark_completed(self, report: dict[str, Any]) -> bool:
        return self._transition(
            (self.Status.RUNNING, self.Status.STOPPING),
            status=self.Status.COMPLETED,
            finished_at=now(),
            report=report,
        )

    def mark_stopped(self, report: dict[str, Any] | None = None) -> bool:
        return self._transition(
            self.ACTIVE_STATUSES,
            status=self.Status.STOPPED,
            finished_at=now(),
            report=report or {},
        )

    def mark_failed(self, error: str, traceback: str = "") -> bool:
        return self._transition(
            self.ACTIVE_STATUSES,
            status=self.Status.FAILED,
            finished_at=now(),
            error=error,
            traceback=traceback,
        )

    def request_stop(self) -> bool:
        """Cancel a queued session at once; ask a running one to stop at the next
        epoch boundary. Return False when the session had already finished."""
        if self._transition(
            (self.Status.QUEUED,), status=self.Status.STOPPED, finished_at=now()
        ):
            return True
        if self.status == self.Status.STOPPING:
            return True
        return self._transition((self.Status.RUNNING,), status=self.Status.STOPPING)

    def resume_if_lost(self) -> bool:
        """Bring an external run failed as lost back to running.

        A script that was only cut off from the server (a network outage longer
        than the heartbeat timeout) speaks again with the points it kept: its run
        goes on rather than refusing them. Only the lost-worker failure is undone.
        """
        lost = self.status == self.Status.FAILED and self.error.startswith(
            "Worker lost"
        )
        if self.model_type != catalog.EXTERNAL_MODEL_TYPE or not lost:
            return False
        return self._transition(
            (self.Status.FAILED,),
            status=self.Status.RUNNING,
            finished_at=None,
            error="",
            heartbeat_at=now(),
        )

    def beat(self) -> None:
        TrainingSession.objects.filter(pk=self.pk).update(heartbeat_at=now())

    def current_status(self) -> str:
        """The status in the database now, without reloading the whole row."""
        return (
            TrainingSession.objects.filter(pk=self.pk)
            .values_list("status", flat=True)
            .get()
        )

    def record_epoch(
        self,
        epoch: int,
        metrics: dict[str, Any],
        duration: float | None = None,
        finished: datetime | None = None,
        progress_every: float = 0.0,
    ) -> EpochMetric:
        """Store one epoch's metrics (`finished`: when it was trained, default now)
        and move the session's counters, atomically; return its row
        (record_trained, for one epoch)."""
        ((epoch, metrics, duration, finished),) = self.record_trained(
            [(epoch, metrics, duration, finished or now())], progress_every
        )
        return EpochMetric.unsaved(self.pk, epoch, metrics, duration, finished)

    def record_trained(
        self, epochs: Sequence[TrainedEpoch], progress_every: float = 0.0
    ) -> Sequence[TrainedEpoch]:
        """Store epochs (epoch, metrics, duration, when it was trained) the worker
        trained, in epoch order, and move the session's counters, atomically;
        return them as stored. The worker saves its epochs this way, those of
        the last quarter second or so at a time (tasks._EpochSaver).

        One INSERT that skips an epoch already there and one UPDATE, where a
        duplicate check first and model saves cost about 1.5 ms of a 5 ms epoch
        (bench/NOTES.md); a few epochs share that statement and its commit. No
        model instances: the worker's Python between two epochs runs with cold
        caches, ~3x slower than the same code in a loop (bench/NOTES.md).

        progress_every (seconds): the counters (current_epoch, heartbeat_at,
        final_metrics, best_val_accuracy) are then written at most this often,
        and this instance keeps them until save_progress() or the next status
        change (_transition), which writes them. The epoch rows are
        what pages and the API read for a run's history; the counters only show
        how far it got. On SQLite a save without the UPDATE is one autocommit
        INSERT instead of four statements, each of which hands the GIL back and
        waits its turn behind the other runs' training threads (bench/NOTES.md).
        """
        moved = self._counters_after(epochs)
        clock = time.monotonic()
        written_at = self.__dict__.get("_progress_written_at")
        due = written_at is None or clock - written_at >= progress_every
        # The connection itself, not the proxy that looks it up at every use.
        connection = connections[DEFAULT_DB_ALIAS]
        if connection.vendor == "postgresql":
            # One statement, so one round trip and no BEGIN/COMMIT of our own:
            # with 10 runs in one worker each round trip also waits for the GIL
            # (bench/NOTES.md).
            inserted = len(
                EpochMetric.objects.insert_epochs(
                    self.pk,
                    [(epoch, metrics, length) for epoch, metrics, length, _ in epochs],
                    [finished for *_, finished in epochs],
                    session_update=moved if due else None,
                )
            )
        elif not connection.in_atomic_block:
            inserted = _record_epochs_sqlite(
                connection, self.pk, epochs, moved if due else None
            )
        else:
            inserted = 0
            with transaction.atomic(savepoint=False):
                for epoch, metrics, duration, finished in epochs:
                    inserted += len(
                        EpochMetric.objects.insert_epochs(
                            self.pk, [(epoch, metrics, duration)], finished
                        )
                    )
                if inserted:
                    with connection.cursor() as cursor:
                        cursor.execute(*_session_update(connection, self.pk, moved))
        if inserted < len(epochs):
            # A retried save whose first attempt committed before the connection
            # broke: an epoch is stored once, as first written.
            stored = [
                (row.epoch, row.metrics, row.duration, row.created)
                for row in EpochMetric.objects.filter(
                    session=self, epoch__in=[epoch for epoch, *_ in epochs]
                ).order_by("epoch")
            ]
            if len(stored) < len(epochs):  # the session was deleted
                raise EpochMetric.DoesNotExist(f"session {self.pk} has no such epochs")
            if not inserted:
                return stored
            epochs = stored
        for name, value in moved.items():
            setattr(self, name, value)
        if due or connection.in_atomic_block:  # the atomic path always updates
            self._progress_written_at = clock
            self._progress_unsaved = False
        else:
            self._progress_unsaved = True
        return epochs

    def count_trained(self, epochs: Sequence[TrainedEpoch]) -> None:
        """Move this instance's counters past epochs the worker has trained and
        is about to announce, before record_trained stores them (which moves
        them the same way): the events show the run as far as it got."""
        for name, value in self._counters_after(epochs).items():
            setattr(self, name, value)

    def _counters_after(self, epochs: Sequence[TrainedEpoch]) -> dict[str, Any]:
        best = self.best_val_accuracy
        for _, metrics, _, _ in epochs:
            accuracy = metrics.get("val_accuracy")
            if accuracy is not None and (best is None or accuracy > best):
                best = accuracy
        last_epoch, last_metrics, _, last_time = epochs[-1]
        return {
            "current_epoch": max(self.current_epoch, last_epoch),
            "heartbeat_at": last_time,
            "final_metrics": row_metrics(last_metrics),
            "best_val_accuracy": best,
        }

    def save_progress(self) -> None:
        """Write the counters that record_trained(progress_every=...) kept back.
        A status change (mark_completed, ...) writes them too, so a finished
        run's row counts every stored epoch."""
        progress = self._unsaved_progress()
        if progress:
            TrainingSession.objects.filter(pk=self.pk).update(**progress)
            self._progress_saved()

    def _progress_saved(self) -> None:
        self._progress_written_at = time.monotonic()
        self._progress_unsaved = False

    def _unsaved_progress(self) -> dict[str, Any]:
        """The counters record_trained kept back, or nothing."""
        if not self.__dict__.get("_progress_unsaved"):
            return {}
        return {
            "current_epoch": self.current_epoch,
            "heartbeat_at": self.heartbeat_at,
            "final_metrics": self.final_metrics,
            "best_val_accuracy": self.best_val_accuracy,
        }

    def record_epochs(
        self, rows: list[tuple[int, dict[str, Any], float | None]]
    ) -> StoredEpochs:
        """Store many epochs (epoch, metrics, duration) at once and move the counters.

        An epoch already stored (a client's retry) is kept as it was; only the new
        rows are returned, in epoch order. The session row is locked for the
        duration, so two overlapping batches cannot both count the same epoch.
        """
        wanted: dict[int, tuple[dict[str, Any], float | None]] = {}
        for epoch, metrics, duration in rows:
            wanted.setdefault(epoch, (metrics, duration))
        moment = now()
        if not wanted:
            return StoredEpochs(self.pk, [], moment)
        items = [(e, *wanted[e]) for e in sorted(wanted)]

        def stored(inserted: set[int]) -> StoredEpochs:
            if len(inserted) == len(items):  # the usual case: every epoch is new
                return StoredEpochs(self.pk, items, moment)
            return StoredEpochs(
                self.pk, [(e, *wanted[e]) for e in sorted(inserted)], moment
            )

        if connection.vendor == "postgresql":
            return stored(self._record_epochs_postgresql(items, moment))
        with transaction.atomic(savepoint=False):
            # SQLite: the transaction began IMMEDIATE, so it holds the write lock.
            # Read the whole row under it: it is this instance's new state once
            # the changes below are applied, with no reload after.
            locked = TrainingSession.objects.owned(self.pk, self.owner_id)
            if locked is None:
                raise TrainingSession.DoesNotExist(f"session {self.pk} was deleted")
            # Every epoch stored is at or below the counter (each batch moves it
            # in its own transaction), as on PostgreSQL: those above it are new.
            new = stored(
                EpochMetric.objects.insert_epochs(
                    self.pk, items, moment, none_stored_above=locked.current_epoch
                )
            )
            changes: dict[str, Any] = {"heartbeat_at": moment}
            if new and new[-1].epoch > locked.current_epoch:
                changes["current_epoch"] = new[-1].epoch
                changes["final_metrics"] = new[-1].metrics
            accuracies = [
                m["val_accuracy"]
                for _, m, _ in new.items
                if m.get("val_accuracy") is not None
            ]
            best = locked.best_val_accuracy
            if accuracies and (best is None or max(accuracies) > best):
                changes["best_val_accuracy"] = max(accuracies)
            with connection.cursor() as cursor:
                cursor.execute(*_session_update(connection, self.pk, changes))
        # What refresh_from_db would do, from the row already read.
        for field in TrainingSession._meta.concrete_fields:
            value = changes.get(field.name, getattr(locked, field.attname))
            setattr(self, field.attname, value)
        return new

    def _record_epochs_postgresql(
        self, items: list[tuple[int, dict[str, Any], float | None]], moment: datetime
    ) -> set[int]:
        """record_epochs on PostgreSQL, as one statement: lock the session row,
        insert the epochs, move its counters, and return its new row (this
        instance's new state) and the epochs inserted.

        Read, insert, update were three round trips of a log call's ten, each
        0.3-1 ms on a busy machine (bench/NOTES.md).

        Epochs above the locked row's counter go in as plain rows: every epoch
        stored is at or below the counter (each insert moves it in its own
        transaction), and whoever inserts another run's epochs holds this lock
        first, so none of them can be there. Only the rest (a client's retry, a
        late epoch) pays for ON CONFLICT's speculative insertion: ~1.6 ms of a
        1,000-epoch insert of ~6 ms (bench/NOTES.md). A batch that waited for the
        lock reads the counter as the other left it (FOR NO KEY UPDATE returns
        the newest row), and its UPDATE sees the other's counters too, so
        GREATEST keeps the highest.
        """
        last, (metrics, duration) = items[-1][0], items[-1][1:]
        # The last epoch's metrics, as the session shows them, if it is new and
        # moves the counter (a stored epoch is never above the counter, so the
        # last inserted is the last sent whenever the counter moves).
        final = StoredEpochs(self.pk, [(last, metrics, duration)], moment)[0].metrics
        session_fields = TrainingSession._meta
        epochs = connection.ops.quote_name(EpochMetric._meta.db_table)
        table = f'"{session_fields.db_table}"'
        names, types, arrays = _epoch_arrays(items)
        quoted = [connection.ops.quote_name(name) for name in names]
        created = EpochMetric._meta.get_field("created").get_db_prep_save(
            moment, connection
        )
        # Columns every row shares: (column, placeholder, value). The same time
        # for all, and no other metrics when none has any.
        shared = [('"created"', "%s", created)]
        if "extra" not in names:
            shared.append(('"extra"', "%s::jsonb", "{}"))
        session_columns, make = _reader(TrainingSession, connection)
        rows_sql = (
            f"INSERT INTO {epochs} ({', '.join(quoted)}, "
            f'{", ".join(column for column, _, _ in shared)}, "session_id") '
            f"SELECT {', '.join(f'item.{name}' for name in quoted)}, "
            f"{', '.join(placeholder for _, placeholder, _ in shared)}, held.id "
            'FROM held, items AS item WHERE item."epoch" {} held."current_epoch"'
        )
        unnest = ", ".join(f"%s::{kind}[]" for kind in types)
        sql = (
            f'WITH held AS (SELECT "id", "current_epoch" FROM {table} '
            'WHERE "id" = %s FOR NO KEY UPDATE), '
            f"items AS (SELECT * FROM unnest({unnest}) AS item({', '.join(quoted)})), "
            f"fresh AS ({rows_sql.format('>')} RETURNING "
            '"epoch", "val_accuracy"), '
            f"late AS ({rows_sql.format('<=')} ON CONFLICT DO NOTHING RETURNING "
            '"epoch", "val_accuracy"), '
            "new AS (SELECT * FROM fresh UNION ALL SELECT * FROM late), "
            f'moved AS (UPDATE {table} SET "heartbeat_at" = %s, "current_epoch" = '
            'GREATEST("current_epoch", (SELECT MAX("epoch") FROM new)), '
            '"final_metrics" = CASE WHEN %s > "current_epoch" AND EXISTS '
            '(SELECT 1 FROM new WHERE "epoch" = %s) THEN %s '
            'ELSE "final_metrics" END, "best_val_accuracy" = GREATEST('
            '"best_val_accuracy", (SELECT MAX("val_accuracy") FROM new)) '
            f'WHERE "id" = %s RETURNING {session_columns.replace(table + ".", "")}) '
            'SELECT moved.*, ARRAY(SELECT "epoch" FROM new) FROM moved'
        )
        shared_values = [value for _, _, value in shared]
        params = [
            self.pk,
            *arrays,
            *shared_values,  # fresh
            *shared_values,  # late
            session_fields.get_field("heartbeat_at").get_db_prep_save(
                moment, connection
            ),
            last,
            last,
            session_fields.get_field("final_metrics").get_db_prep_save(
                final, connection
            ),
            self.pk,
        ]
        with transaction.atomic(savepoint=False), _hot_cursor(connection) as cursor:
            cursor.execute(sql, params)
            row = cursor.fetchone()
        if row is None:
            raise TrainingSession.DoesNotExist(f"session {self.pk} was deleted")
        fresh = make(row[:-1])
        for field in session_fields.concrete_fields:
            setattr(self, field.attname, getattr(fresh, field.attname))
        return set(row[-1])

    def external_stats(self) -> dict[str, Any]:
        """Throughput and time left of a run, from its clock and epoch counter."""
        elapsed = self.duration_seconds or 0.0
        per_epoch = elapsed / self.current_epoch if self.current_epoch else None
        left = (
            per_epoch * max(0, self.total_epochs - self.current_epoch)
            if per_epoch is not None and self.total_epochs
            else None
        )
        return {
            "elapsedSeconds": round(elapsed, 3),
            "epochsPerMinute": round(60 / per_epoch, 2) if per_epoch else None,
            "etaSeconds": round(left, 1) if left is not None else None,
        }


@receiver(pre_delete, sender=TrainingSession)
def _lock_before_delete(
    sender: type[TrainingSession], instance: TrainingSession, using: str, **kwargs: Any
) -> None:
    # A deletion deletes the session's epochs (CASCADE, done by Django: the table
    # has no constraint) in its transaction, right after this signal. Lock the row
    # first, so an INSERT of epochs that holds it commits before they are deleted,
    # and one that comes later finds no session (_session_exists).
    list(
        TrainingSession.objects.using(using)
        .select_for_update()
        .filter(pk=instance.pk)
        .values_list("pk")
    )


class EpochMetricQuerySet(models.QuerySet):
    def insert_epochs(
        self,
        session_id: int,
        items: list[tuple[int, dict[str, Any], float | None]],
        created: Any,
        session_update: dict[str, Any] | None = None,
        none_stored_above: int | None = None,
    ) -> set[int]:
        """INSERT (epoch, metrics, duration) rows, all with the time `created`, and
        return the epochs inserted: an epoch already stored is kept as it was.

        created may also be a list of times, one per row (PostgreSQL only: the
        worker's epochs, saved several at a time, each keep when it was trained).

        session_update (PostgreSQL only): columns of the session to set in the
        same statement when at least one row was inserted.

        none_stored_above (SQLite): the caller knows, under the write lock, that
        no epoch above this one is stored: those rows are inserted without asking
        SQLite which went in (RETURNING was ~0.5 ms of a 1,000-row insert's ~1.3).
        If one were there after all, the INSERT fails on the unique constraint.

        bulk_create of a 1,000-epoch log batch spent most of its time building
        model instances and preparing each of their fields: here values go to the
        driver as plain columns, converted the way the fields would.
        """
        if not items:
            return set()
        connection = connections[self.db]
        # One time for the whole batch, bound once: written per row it was
        # ~1,000 isoformat() calls and 30 KB more JSON on PostgreSQL.
        field = EpochMetric._meta.get_field("created")
        if isinstance(created, list):
            if connection.vendor != "postgresql":
                raise NotSupportedError("a time per row needs PostgreSQL")
            created = [field.get_db_prep_save(time, connection) for time in created]
        else:
            created = field.get_db_prep_save(created, connection)
        # Both INSERTs end in ON CONFLICT DO NOTHING RETURNING "epoch", which
        # lists only the rows inserted (SQLite 3.35+, PostgreSQL), so no query for
        # the epochs already there is needed.
        if connection.vendor == "postgresql":
            return _insert_from_json(
                connection, session_id, created, items, session_update
            )
        if session_update:
            raise NotSupportedError("session_update needs PostgreSQL")
        if none_stored_above is None:
            return _insert_values(connection, session_id, created, items)
        # items are in epoch order.
        split = next(
            (i for i, item in enumerate(items) if item[0] > none_stored_above),
            len(items),
        )
        inserted = _insert_values(connection, session_id, created, items[:split])
        return inserted | _insert_values(
            connection, session_id, created, items[split:], known_new=True
        )


def _insert_values(
    connection: Any,
    session_id: int,
    created: Any,
    items: list[tuple[int, dict[str, Any], float | None]],
    known_new: bool = False,
) -> set[int]:
    """The rows as multi-row VALUES lists (SQLite), with only the columns a batch
    uses: a script that logs one metric binds 2 values an epoch, not 13, and
    SQLite's time grows with the values bound (~3.7 -> ~2.3 ms for 1,000 rows).

    known_new: none of these epochs is stored (EpochMetricQuerySet.insert_epochs).
    """
    if not items:
        return set()
    keys = set().union(*(metrics.keys() for _, metrics, _ in items))
    standard = [name for name in STANDARD_METRICS if name in keys]
    with_duration = any(duration is not None for _, _, duration in items)
    with_extra = not keys <= _STANDARD_SET
    extra_field = EpochMetric._meta.get_field("extra")
    no_extra = extra_field.get_db_prep_save({}, connection)
    values = []
    for epoch, metrics, duration in items:
        get = metrics.get
        row = [epoch]
        row += [
            None if (value := get(name)) is None else float(value) for name in standard
        ]
        if with_duration:
            row.append(None if duration is None else float(duration))
        if with_extra:
            extra = {k: v for k, v in metrics.items() if k not in _STANDARD_SET}
            row.append(
                extra_field.get_db_prep_save(extra, connection) if extra else no_extra
            )
        values.append(row)
    quote = connection.ops.quote_name
    columns = ["epoch", *standard, *["duration"] * with_duration]
    selected = [f"column{i}" for i in range(1, len(columns) + 1)]
    constants = [session_id]
    if with_extra:
        selected.append(f"column{len(selected) + 1}")
    else:
        constants.insert(0, no_extra)
        selected.append("?")
    selected += ["?", "?"]  # session_id, created
    constants.append(created)
    columns += ["extra", "session_id", "created"]
    head = (
        f"INSERT INTO {quote(EpochMetric._meta.db_table)} "
        f"({', '.join(quote(name) for name in columns)}) "
        f"SELECT {', '.join(selected)} FROM (VALUES "
    )
    # A WHERE is also what SQLite's parser needs between a SELECT and ON CONFLICT.
    exists = _session_exists(connection.vendor)
    tail = f") WHERE {exists}"
    if not known_new:
        tail += ' ON CONFLICT DO NOTHING RETURNING "epoch"'
    one_row = "(" + ", ".join(["?"] * len(values[0])) + ")"
    inserted: set[int] = set()
    connection.ensure_connection()
    # The driver's own cursor, with its "?" placeholders: Django's rewrites every
    # "%s" of the statement with a regular expression first, ~1 ms a 500-row
    # statement. Errors still become Django's (503 for "database is locked").
    with connection.wrap_database_errors:
        cursor = connection.connection.cursor()
        try:
            for start in range(0, len(values), 500):
                batch = values[start : start + 500]
                cursor.execute(
                    f"{head}{', '.join([one_row] * len(batch))}{tail}",
                    [
                        *constants,
                        *(value for row in batch for value in row),
                        session_id,
                    ],
                )
                if not known_new:
                    inserted.update(epoch for (epoch,) in cursor.fetchall())
                elif cursor.rowcount:  # 0: the session is gone
                    inserted.update(row[0] for row in batch)
        finally:
            cursor.close()
        return inserted


def _epoch_arrays(
    items: Sequence[tuple[int, dict[str, Any], float | None]],
) -> tuple[list[str], list[str], list[str]]:
    """The epochs as PostgreSQL array literals, one per column a batch uses
    (column names, their types, the literals), for `unnest`.

    The server takes an array of numbers apart far faster than a JSON document
    of objects, where each standard metric was a lookup of its own in every
    row's object: ~1 ms of a 1,000-epoch batch's ~5 ms statement (bench/NOTES.md).
    Numbers as JSON writes them (floats as their shortest exact text, which
    float8 reads back unchanged); other metrics as one JSON text per epoch.
    """
    names, types = ["epoch"], ["integer"]
    arrays = [_number_array([epoch for epoch, _, _ in items])]
    keys = set().union(*(metrics.keys() for _, metrics, _ in items))
    for name in STANDARD_METRICS:
        if name in keys:
            names.append(name)
            types.append("double precision")
            arrays.append(_number_array([m.get(name) for _, m, _ in items]))
    if any(duration is not None for _, _, duration in items):
        names.append("duration")
        types.append("double precision")
        arrays.append(_number_array([duration for _, _, duration in items]))
    if not keys <= _STANDARD_SET:
        extras = [
            {k: v for k, v in metrics.items() if k not in _STANDARD_SET}
            for _, metrics, _ in items
        ]
        names.append("extra")
        types.append("jsonb")
        from sessions.metrics import json_text  # metrics imports this module

        arrays.append("{" + ",".join([_array_text(json_text(e)) for e in extras]) + "}")
    return names, types, arrays


def _number_array(values: list[Any]) -> str:
    """Numbers (or None) as an array literal. orjson writes them as JSON does,
    which is what an array literal takes between its braces (null is NULL):
    ~10x faster than repr() of each value."""
    try:
        text = orjson.dumps(values, default=float).decode()
    except TypeError:  # an integer beyond 64 bits: as the float column keeps it
        text = json.dumps([None if v is None else float(v) for v in values])
    return "{" + text[1:-1] + "}"


def _array_text(text: str) -> str:
    """text as one element of an array literal: quoted, with its backslashes and
    double quotes escaped."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _json_document(items: Sequence[tuple[Any, ...]]) -> str:
    """The rows as one JSON document of [epoch, metrics, duration] arrays (and
    the time each was made, if the rows carry it)."""
    try:
        # orjson: ~0.08 ms for 1,000 epochs, where json took ~0.95 ms. The same
        # shortest exact text for every float. JSON has no NaN (orjson would
        # write null); neither the API nor the trainer lets one through.
        # Datetimes as ISO 8601 with their offset, which timestamptz reads.
        return orjson.dumps(items, default=float).decode()  # numpy floats
    except TypeError:  # an integer beyond 64 bits (an external run may log one)
        return json.dumps(items, default=_float_or_iso, allow_nan=False)


def _float_or_iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else float(value)


def _json_columns(connection: Any, created_per_row: bool = False) -> tuple[str, str]:
    """(the epoch table's columns, the SELECT list that makes them from a JSON
    `item` of _json_document: two parameters, the standard metric names as a
    text[] and the creation time, followed by the session id's expression).
    created_per_row: each item carries its own time, fourth; no parameter."""
    quote = connection.ops.quote_name
    columns = ("epoch", *STANDARD_METRICS, "duration", "extra", "created", "session_id")
    standard = ", ".join(
        f"(item->1->>'{name}')::double precision" for name in STANDARD_METRICS
    )
    created = "(item->>3)::timestamptz" if created_per_row else "%s"
    select = (
        f"(item->>0)::integer, {standard}, "
        f"(item->>2)::double precision, (item->1) - %s::text[], {created}"
    )
    return ", ".join(quote(name) for name in columns), select


def _insert_from_json(
    connection: Any,
    session_id: int,
    created: Any,
    items: list[tuple[int, dict[str, Any], float | None]],
    session_update: dict[str, Any] | None = None,
) -> set[int]:
    """The rows as one JSON document that PostgreSQL takes apart itself.

    An array per column made psycopg walk every value in Python (~13 ms of a
    1,000-epoch batch); json.dumps is C, and taking 1,000 rows apart costs the
    server ~1 ms. Numbers go through their shortest exact text (repr) and back,
    so every float arrives unchanged.
    """
    per_row = isinstance(created, list)
    columns, select = _json_columns(connection, created_per_row=per_row)
    sql = (
        f"INSERT INTO {connection.ops.quote_name(EpochMetric._meta.db_table)} "
        f"({columns}) SELECT {select}, %s "
        "FROM jsonb_array_elements(%s::jsonb) AS item "
        f"WHERE {_session_exists(connection.vendor)} "
        'ON CONFLICT DO NOTHING RETURNING "epoch"'
    )
    names = list(STANDARD_METRICS)
    if per_row:
        rows = [(*item, time) for item, time in zip(items, created, strict=True)]
        params = [names, session_id, _json_document(rows), session_id]
    else:
        params = [names, created, session_id, _json_document(items), session_id]
    if session_update:
        sql, params = _and_update_session(
            connection, sql, params, session_id, session_update
        )
    with _hot_cursor(connection) as cursor:
        cursor.execute(sql, params)
        return {epoch for (epoch,) in cursor.fetchall()}


def _record_epochs_sqlite(
    connection: Any,
    session_id: int,
    epochs: Sequence[TrainedEpoch],
    moved: dict[str, Any] | None,
) -> int:
    """Insert epochs' rows (one statement) and, if any was new and `moved` is
    given, move their session's columns, on this thread's own driver connection
    (_epoch_writer); return how many rows went in. Through Django's atomic() and
    cursors this was ~0.5 ms of a worker's 5 ms epoch (bench/NOTES.md). Outside
    an atomic block only: the transaction is this function's own.

    The rows alone are one autocommit INSERT: SQLite takes the write lock when
    that statement starts and commits when it ends, what BEGIN IMMEDIATE and
    COMMIT around it did in three statements (three GIL hand-backs). With the
    UPDATE the two run between BEGIN IMMEDIATE and COMMIT (both write: take the
    write lock up front rather than fail to upgrade a read lock midway)."""
    values: list[Any] = []
    for epoch, metrics, duration, finished in epochs:
        values += _sqlite_epoch_values(
            connection, session_id, epoch, metrics, duration, finished
        )
    insert = (_sqlite_epoch_insert_sql(len(epochs)), [*values, session_id])
    with connection.wrap_database_errors:
        database = _epoch_writer(connection)
        cursor = database.cursor()
        try:
            if moved is None:
                _execute_when_unlocked(connection, cursor, *insert)
                # Its row count, not RETURNING: fetching the returned rows is
                # one more step with the GIL let go and taken back.
                inserted = cursor.rowcount
            else:
                update_sql, update_params = _session_update(
                    connection, session_id, moved
                )
                _execute_when_unlocked(connection, cursor, "BEGIN IMMEDIATE")
                cursor.execute(*insert)
                inserted = cursor.rowcount
                if inserted:
                    cursor.execute(update_sql.replace("%s", "?"), update_params)
                cursor.execute("COMMIT")
        except BaseException:
            cursor.close()
            # Closed rather than rolled back: a failure here may have been the
            # connection itself, and the next save opens a fresh one.
            _epoch_writers.by_name.pop(connection.settings_dict["NAME"], None)
            database.close()
            raise
        cursor.close()
    return inserted


_epoch_writers = threading.local()


def _epoch_writer(connection: Any) -> sqlite3.Connection:
    """The calling thread's own SQLite connection for epoch saves: autocommit, and
    no busy timeout, so _execute_when_unlocked does the waiting without the two PRAGMA
    statements per save that switching the shared connection's timeout took.

    Every statement hands the GIL back and waits to retake it; with ten runs in one
    worker each wait is a turn behind the other training threads, and the waits
    between an epoch's end and its push were most of the 10-runs latency
    (bench/NOTES.md). Keyed by database file (tests use their own)."""
    name = connection.settings_dict["NAME"]
    mine = getattr(_epoch_writers, "by_name", None)
    if mine is None:
        mine = _epoch_writers.by_name = {}
    database = mine.get(name)
    if database is None:
        database = sqlite3.connect(name, timeout=0, isolation_level=None)
        # As the settings' init_command does for Django's connections (WAL mode
        # is the file's own and stays).
        database.execute("PRAGMA synchronous=NORMAL")
        mine[name] = database
    return database


# How long the worker's epoch save sleeps between tries for SQLite's write lock.
SQLITE_LOCK_RETRY_SECONDS = 0.001


def _execute_when_unlocked(
    connection: Any, cursor: sqlite3.Cursor, sql: str, params: Sequence[Any] = ()
) -> None:
    """Execute a statement that takes SQLite's write lock first (BEGIN IMMEDIATE,
    or a write in autocommit mode), trying every millisecond while another writer
    holds the lock, for up to the settings' busy timeout (the connection itself
    has none: _epoch_writer). A statement refused for the lock did nothing, so
    trying it again is safe.

    SQLite's own busy handler sleeps 1, 2, 5 ... 100 ms between tries, so with ten
    runs in one worker a save that lost a few times waited ~1 s (the 10-runs p99,
    bench/NOTES.md). Only taking the lock waits: once it holds the lock, nothing
    in the transaction waits for another connection in WAL mode.
    """
    timeout = connection.settings_dict["OPTIONS"].get("timeout", 5)
    deadline = time.monotonic() + timeout
    while True:
        try:
            cursor.execute(sql, params)
            return
        except sqlite3.OperationalError as exc:
            # The extended code too: SQLITE_BUSY_SNAPSHOT, when a write in
            # autocommit mode found that another writer committed as it began.
            busy = exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
            if not busy or time.monotonic() >= deadline:
                raise
        time.sleep(SQLITE_LOCK_RETRY_SECONDS)  # another writer's commit


def _session_exists(vendor: str) -> str:
    """The condition every INSERT of epochs has, with the session id as its last
    parameter: the table has no foreign-key constraint (EpochMetric.session).
    (The API's PostgreSQL batches hold the session row's NO KEY UPDATE lock
    instead, which is stronger: TrainingSession._record_epochs_postgresql.)

    On PostgreSQL the KEY SHARE lock keeps the session from being deleted until
    the INSERT commits, and a deletion that came first leaves nothing to find:
    what the constraint checked once per row, once per statement. SQLite's
    writers take turns. Placeholders are each path's own (SQLite's go to the
    driver as "?"; double quotes are both databases' quoting of names).
    """
    table = f'"{TrainingSession._meta.db_table}"'
    if vendor == "postgresql":
        return f'EXISTS (SELECT 1 FROM {table} WHERE "id" = %s FOR KEY SHARE)'
    return f'EXISTS (SELECT 1 FROM {table} WHERE "id" = ?)'


@functools.cache
def _epoch_attnames() -> tuple[str, ...]:
    return tuple(field.attname for field in EpochMetric._meta.concrete_fields)


def _int_or_none(value: Any, connection: Any) -> int | None:
    return None if value is None else int(value)


def _float_or_none(value: Any, connection: Any) -> float | None:
    return None if value is None else float(value)


def _prep(field: models.Field) -> Any:
    """How a value of this field goes to the driver, as (value, connection) ->
    value: numbers as the ORM makes them (int(), float()), the rest (JSON, dates)
    through the field itself. The field's get_db_prep_save for every column was
    half of the worker's epoch save (bench/NOTES.md)."""
    if isinstance(field, models.FloatField):
        return _float_or_none
    if isinstance(field, models.IntegerField | models.ForeignKey):
        return _int_or_none
    return field.get_db_prep_save


# The epoch table's columns in the order _sqlite_epoch_values gives them.
_SQLITE_EPOCH_COLUMNS = (
    "session_id",
    "epoch",
    *STANDARD_METRICS,
    "duration",
    "extra",
    "created",
)


def _sqlite_epoch_values(
    connection: Any,
    session_id: int,
    epoch: int,
    metrics: dict[str, Any],
    duration: float | None,
    finished: datetime,
) -> list[Any]:
    """One worker epoch's row for SQLite, converted as its fields would convert
    it (numbers by int() and float()), with no model instance: building one and
    preparing each of its fields was half of an epoch save (bench/NOTES.md)."""
    get = metrics.get
    extra = {k: v for k, v in metrics.items() if k not in _STANDARD_SET}
    return [
        session_id,
        int(epoch),
        *[
            None if (value := get(name)) is None else float(value)
            for name in STANDARD_METRICS
        ],
        None if duration is None else float(duration),
        _extra_field().get_db_prep_save(extra, connection) if extra else "{}",
        connection.ops.adapt_datetimefield_value(finished),
    ]


@functools.cache
def _extra_field() -> models.Field:
    return EpochMetric._meta.get_field("extra")


@functools.cache
def _sqlite_epoch_insert_sql(count: int) -> str:
    """The INSERT of `count` epochs (_sqlite_epoch_values), with the SQLite
    driver's "?" placeholders, if their session exists (_session_exists: the
    session id is the last parameter). One statement, so they go in together or
    not at all."""
    columns = ", ".join(f'"{name}"' for name in _SQLITE_EPOCH_COLUMNS)
    placeholders = ", ".join("?" * len(_SQLITE_EPOCH_COLUMNS))
    if count == 1:
        select = f"SELECT {placeholders}"
    else:
        select = f"SELECT * FROM (VALUES {', '.join([f'({placeholders})'] * count)})"
    return (
        f'INSERT INTO "{EpochMetric._meta.db_table}" ({columns}) {select} '
        f"WHERE {_session_exists('sqlite')} ON CONFLICT DO NOTHING"
    )


@functools.cache
def _session_update_parts(
    names: tuple[str, ...],
) -> tuple[str, tuple[Any, ...]]:
    # Double quotes are both SQLite's and PostgreSQL's quoting of names.
    fields = [TrainingSession._meta.get_field(name) for name in names]
    sets = ", ".join(f'"{field.column}" = %s' for field in fields)
    sql = f'UPDATE "{TrainingSession._meta.db_table}" SET {sets} WHERE "id" = %s'
    return sql, tuple(_prep(field) for field in fields)


def _session_update(
    connection: Any, session_id: int, columns: dict[str, Any]
) -> tuple[str, list[Any]]:
    """UPDATE of some columns of one session, as raw SQL: the worker runs it every
    epoch, and the ORM's update() took most of an epoch save's CPU time."""
    sql, preps = _session_update_parts(tuple(columns))
    values = [
        prep(value, connection)
        for prep, value in zip(preps, columns.values(), strict=True)
    ]
    return sql, [*values, session_id]


def _and_update_session(
    connection: Any,
    insert_sql: str,
    insert_params: list[Any],
    session_id: int,
    columns: dict[str, Any],
) -> tuple[str, list[Any]]:
    """The INSERT ... RETURNING "epoch" and an UPDATE of the session's columns,
    done only if a row was inserted, as one statement (a data-modifying CTE)."""
    update_sql, update_params = _session_update(connection, session_id, columns)
    sql = (
        f"WITH new AS ({insert_sql}), moved AS ("
        f"{update_sql} AND EXISTS (SELECT 1 FROM new)) "
        'SELECT "epoch" FROM new'
    )
    return sql, [*insert_params, *update_params]


class StoredEpochs(Sequence["EpochMetric"]):
    """The epochs one log batch stored, in epoch order.

    Each becomes an EpochMetric only when read: the push of a large batch reads
    the first and the last, and building 1,000 instances cost more than the insert.
    """

    def __init__(
        self,
        session_id: int,
        items: list[tuple[int, dict[str, Any], float | None]],
        created: Any,
    ) -> None:
        self.session_id = session_id
        self.items = items
        self.created = created

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        epoch, metrics, duration = self.items[index]
        return EpochMetric.unsaved(
            self.session_id, epoch, metrics, duration, self.created
        )


class EpochMetric(models.Model):
    # Keyed by (session, epoch): one row per epoch, so a retried save or log
    # batch cannot duplicate it. A surrogate id beside it was a second index and
    # a sequence for every row: ~0.8 ms of a 1,000-epoch log batch's ~5 ms
    # insert on PostgreSQL (bench/NOTES.md).
    pk = models.CompositePrimaryKey("session_id", "epoch")
    # No foreign-key constraint in the database, and no index of its own: the
    # constraint's check, deferred to the commit and fired once per row, was
    # ~3.6 ms of a 1,000-epoch log batch on PostgreSQL, and the primary key's
    # (session, epoch) index serves every lookup by session (bench/NOTES.md). Every
    # INSERT checks that its session exists, under a lock a deletion waits for
    # (_lock_before_delete), and deleting a session still deletes its epochs.
    session = models.ForeignKey(
        TrainingSession,
        models.CASCADE,
        related_name="epochs",
        db_constraint=False,
        db_index=False,
    )
    epoch = models.PositiveIntegerField()
    train_loss = models.FloatField(null=True, blank=True)
    val_loss = models.FloatField(null=True, blank=True)
    train_accuracy = models.FloatField(null=True, blank=True)
    val_accuracy = models.FloatField(null=True, blank=True)
    learning_rate = models.FloatField(null=True, blank=True)
    precision = models.FloatField(null=True, blank=True)
    recall = models.FloatField(null=True, blank=True)
    f1 = models.FloatField(null=True, blank=True)
    duration = models.FloatField(null=True, blank=True)
    # Metrics with other names, logged by external runs.
    extra = models.JSONField(default=dict, blank=True)
    created = models.DateTimeField(default=now)

    objects = EpochMetricQuerySet.as_manager()

    class Meta:
        ordering = ["session", "epoch"]

    def __str__(self) -> str:
        return f"session {self.session_id} epoch {self.epoch}"

    @classmethod
    def unsaved(
        cls,
        session_id: int,
        epoch: int,
        metrics: dict[str, Any],
        duration: float | None,
        created: Any,
    ) -> EpochMetric:
        """An instance of a row as record_epochs stores it: standard metrics in
        their columns, the rest in extra."""
        given = {
            "session_id": session_id,
            "epoch": epoch,
            "duration": duration,
            "extra": {k: v for k, v in metrics.items() if k not in _STANDARD_SET},
            "created": created,
        }
        get = metrics.get
        # Positional, in column order: Model.__init__'s keyword path took twice as
        # long, and the worker makes one of these every epoch.
        return cls(
            *(given[name] if name in given else get(name) for name in _epoch_attnames())
        )

    @property
    def metrics(self) -> dict[str, Any]:
        values = {name: getattr(self, name) for name in STANDARD_METRICS}
        values.update(self.extra)
        return values

    def as_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "metrics": self.metrics,
            "duration": self.duration,
            "time": _iso(self.created),
        }


class ApiTokenQuerySet(models.QuerySet):
    def authenticate(self, raw: str) -> ApiToken | None:
        """The live token matching `raw`, or None. Only a hash is stored."""
        digest = ApiToken.hash(raw)
        # The token and its user in one query, as select_related("user") reads
        # them, but as cached raw SQL: every API call asks (_reader).
        db = connections[self.db]
        user_model = ApiToken._meta.get_field("user").related_model
        token_columns, make_token = _reader(ApiToken, db)
        user_columns, make_user = _reader(user_model, db)
        table, users = ApiToken._meta.db_table, user_model._meta.db_table
        with _hot_cursor(db) as cursor:
            cursor.execute(
                f'SELECT {token_columns}, {user_columns} FROM "{table}"'
                f' INNER JOIN "{users}" ON "{users}"."id" = "{table}"."user_id"'
                f' WHERE "{table}"."key_hash" = %s'
                f' AND "{table}"."revoked_at" IS NULL',
                [digest],
            )
            row = cursor.fetchone()
        if row is None:
            return None
        split = len(ApiToken._meta.concrete_fields)
        token = make_token(row[:split])
        token.user = make_user(row[split:])
        if not hmac.compare_digest(token.key_hash, digest):
            return None
        if not token.user.is_active:
            return None
        return token


class ApiToken(models.Model):
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=12, editable=False)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created = models.DateTimeField(default=now, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.prefix}... ({self.user})"

    @staticmethod
    def hash(raw: str) -> str:
        return hashlib.sha256(raw.encode()).hexdigest()

    @classmethod
    def issue(cls, user: Any, name: str = "") -> tuple[ApiToken, str]:
        """Create a token; return it with the raw key, which is shown only once."""
        raw = "mlt_" + secrets.token_urlsafe(32)
        token = cls.objects.create(
            user=user, name=name, prefix=raw[:12], key_hash=cls.hash(raw)
        )
        return token, raw

    def revoke(self) -> None:
        self.revoked_at = now()
        self.save(update_fields=["revoked_at"])


# Key of the PostgreSQL advisory lock that serializes claims of a training slot.
_SLOT_LOCK = 7_310_233


class TrainingEventQuerySet(models.QuerySet):
    def for_user(self, user: Any) -> TrainingEventQuerySet:
        """Events this user may see: staff every session's, others their own."""
        if user.is_staff:
            return self
        return self.filter(owner=user)

    def head(self) -> int:
        """The id of the newest event: a cursor that has seen everything so far."""
        return self.order_by("-id").values_list("id", flat=True).first() or 0

    def prune(self, older_than: timedelta) -> int:
        return self.filter(created__lt=now() - older_than).delete()[0]

    def append(
        self, rows: Sequence[tuple[int, int, str, str]], lock: int | None = None
    ) -> list[int]:
        """Store events given as (session id, owner id, type, JSON text) in one
        INSERT per 500, in order; return their ids. `lock` (PostgreSQL): an
        advisory lock taken for the transaction by the first INSERT itself, before
        it draws any id: one round trip fewer than a SELECT of its own.

        The worker stores an event for every epoch, and the ORM's bulk_create
        (instances, and a second json.dumps of a text already made for the push)
        was ~90 us of each on the event writer's thread, which competes with the
        training thread for the GIL (bench/NOTES.md).
        """
        connection = connections[self.db]
        quote = connection.ops.quote_name
        meta = TrainingEvent._meta
        columns = ("session_id", "owner_id", "type", "data", "created")
        data = "%s::jsonb" if connection.vendor == "postgresql" else "%s"
        one_row = f"(%s, %s, %s, {data}, %s)"
        created = meta.get_field("created").get_db_prep_save(now(), connection)
        head = (
            f"INSERT INTO {quote(meta.db_table)} "
            f"({', '.join(quote(name) for name in columns)}) VALUES "
        )
        returning = f" RETURNING {quote('id')}"
        ids: list[int] = []
        with _hot_cursor(connection) as cursor:
            for start in range(0, len(rows), 500):
                chunk = rows[start : start + 500]
                values = ", ".join([one_row] * len(chunk))
                params = [value for row in chunk for value in (*row, created)]
                if lock is not None and start == 0:
                    # The rows come out of the join only once the lock is held,
                    # and their ids are drawn as they go in.
                    names = ", ".join(quote(name) for name in columns)
                    statement = (
                        f"{head.removesuffix(' VALUES ')} SELECT new_event.* FROM "
                        "(SELECT pg_advisory_xact_lock(%s)) AS held, "
                        f"(VALUES {values}) AS new_event ({names})"
                    )
                    params.insert(0, lock)
                else:
                    statement = head + values
                cursor.execute(statement + returning, params)
                ids.extend(pk for (pk,) in cursor.fetchall())
        return ids


class TrainingEvent(models.Model):
    """Every event pushed to WebSockets, kept for clients that poll instead.

    The auto-increment id is the cursor of GET /api/ml/real-time-updates: events
    are only ever appended, so "id > cursor" is exactly what a client has not seen.
    """

    session = models.ForeignKey(TrainingSession, models.CASCADE, related_name="events")
    # The session's owner, copied so a user's events are one index range.
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.CASCADE, related_name="+"
    )
    type = models.CharField(max_length=32)
    data = models.JSONField()
    created = models.DateTimeField(default=now)

    objects = TrainingEventQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        indexes = [
            # real-time-updates for a non-staff user: their events after a cursor.
            models.Index(fields=["owner", "id"], name="event_owner_id"),
            # Pruning: events older than the retention.
            models.Index(fields=["created"], name="event_created"),
        ]

    def __str__(self) -> str:
        return f"event {self.pk} {self.type} of session {self.session_id}"

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.pk, "time": _iso(self.created), **self.data}


def _iso(moment: Any) -> str | None:
    return moment.isoformat() if moment else None


class StoredChart(models.Model):
    """A finished session's thinned chart, as the training-metrics API answers it.

    Reading and thinning every epoch of a long run costs more than reading this
    one row (SQLite ~50 ms against ~2 for 20,000 epochs), and Redis, where the
    answer is cached too, loses it on a restart or a flush. `key` says what the
    answer was made from (metrics.chart_json's cache key: status, epoch count and
    last epoch): a row whose key no longer matches, e.g. after an external run
    logged more epochs, is never read, and is replaced at the next read.
    """

    session = models.OneToOneField(
        TrainingSession, models.CASCADE, primary_key=True, related_name="+"
    )
    key = models.CharField(max_length=200)
    text = models.TextField()

    def __str__(self) -> str:
        return f"stored chart of session {self.session_id}"
