"""Read a session's epochs for charts and exports without building model instances.

A 100,000-epoch session must open as fast as a short one. Rows come from the
driver as plain tuples: Django's per-row converters (a timestamp parsed from
text on SQLite, JSON decoded on both) cost more than the query itself, so times
and extra metrics are converted only for the rows that are sent. Exports are
written in large pieces: Django's ASGI handler sends each piece of a streamed
response as a message of its own.
"""

from __future__ import annotations

import csv
import gc
import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from django.core.cache import cache
from django.core.exceptions import EmptyResultSet
from django.db import connections
from django.db.models import Count, Max, QuerySet, TextField
from django.db.models.functions import Cast

from sessions.downsample import downsample_series
from sessions.models import STANDARD_METRICS, EpochMetric, TrainingSession

logger = logging.getLogger(__name__)

CHART_MAX_POINTS = 1000
# A finished session's thinned chart is kept this long in the cache (Redis).
CHART_CACHE_SECONDS = 24 * 3600
# Rows per piece of an export: about 100 KB of text.
EXPORT_ROWS_PER_PIECE = 1000
_COLUMNS = ("epoch", *STANDARD_METRICS, "duration", "created", "extra")
# Positions in a row of _COLUMNS.
_DURATION, _CREATED, _EXTRA = 9, 10, 11
_NO_EXTRA = "{}"


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Reading a long run makes hundreds of thousands of tuples, floats and dicts,
    and every few hundred of them start a pass of the cyclic garbage collector
    over all that are alive: about half of a 20,000-epoch chart request here
    (118 ms -> 60 ms without it). They form no cycles, so reference counting
    frees them all; the collector runs again when the reading is done."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _in_range(
    rows: QuerySet[EpochMetric], first: int | None, last: int | None
) -> QuerySet[EpochMetric]:
    if first is not None:
        rows = rows.filter(epoch__gte=first)
    if last is not None:
        rows = rows.filter(epoch__lte=last)
    return rows.order_by("epoch")


def _table(
    rows: QuerySet[EpochMetric], first: int | None = None, last: int | None = None
) -> tuple[list[tuple], Any]:
    """The rows of _COLUMNS in epoch order as the driver returns them (created as
    text on SQLite, extra as JSON text), and the connection."""
    connection = connections[rows.db]
    columns = _COLUMNS
    if connection.vendor == "sqlite":
        # The driver would parse each time with Django's regex converter; as text
        # it goes through fromisoformat, in C, for the rows sent only.
        rows = rows.annotate(created_text=Cast("created", TextField()))
        columns = tuple("created_text" if c == "created" else c for c in columns)
    query = _in_range(rows, first, last).values_list(*columns).query
    try:
        sql, params = query.get_compiler(connection=connection).as_sql()
    except EmptyResultSet:  # a bound no row can meet, e.g. beyond the column's range
        return [], connection
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            _load_times_in_c(cursor.cursor)
        cursor.execute(sql, params)
        return cursor.fetchall(), connection


def _load_times_in_c(cursor: Any) -> None:
    """Have this psycopg cursor load timestamptz with psycopg's own loader.

    Django's is a Python subclass of it, ten times slower (2.5 s against 0.24 s
    for 267,000 rows here, most of a 20,000-epoch chart request). Both give the
    instant in the session's time zone, which Django sets to its own.
    """
    import psycopg

    timestamptz = psycopg.postgres.types["timestamptz"].oid
    loader = psycopg.postgres.adapters.get_loader(timestamptz, psycopg.pq.Format.TEXT)
    cursor.adapters.register_loader("timestamptz", loader)


def _iso(created: Any, connection: Any) -> str | None:
    """A driver's created value as the ISO text the API sends, as Django would
    convert it: SQLite's is naive text, in the connection's time zone."""
    if created is None:
        return None
    if isinstance(created, str):
        created = datetime.fromisoformat(created).replace(tzinfo=connection.timezone)
    return created.isoformat()


def _api_rows(table: list[tuple], connection: Any) -> list[dict[str, Any]]:
    """API rows ({epoch, metrics, duration, time}) of whole table rows."""
    result = []
    for row in table:
        metrics = dict(zip(STANDARD_METRICS, row[1:_DURATION], strict=True))
        if row[_EXTRA] != _NO_EXTRA:
            metrics.update(json.loads(row[_EXTRA]))
        result.append(
            {
                "epoch": row[0],
                "metrics": metrics,
                "duration": row[_DURATION],
                "time": _iso(row[_CREATED], connection),
            }
        )
    return result


def chart_json(
    session: TrainingSession,
    first: int | None = None,
    last: int | None = None,
    max_points: int | None = None,
) -> str:
    """The training-metrics API's answer (see chart_rows) as JSON text.

    A finished session's thinned answer is cached, keyed by the epochs it holds
    (how many, and the last): a long run's chart is read and thinned once, not on
    every page that opens it. Epochs are never changed once stored, and a
    session that starts again changes status, so the key says what it holds.
    """
    rows = EpochMetric.objects.filter(session=session)
    key = None
    if max_points is not None and not session.is_active:
        held = _in_range(rows, first, last).aggregate(n=Count("pk"), top=Max("epoch"))
        # The creation time too: SQLite may give a deleted session's id again.
        key = (
            f"chart:{session.pk}:{session.created.timestamp()}:{session.status}"
            f":{first}:{last}:{max_points}:{held['n']}:{held['top']}"
        )
        try:
            text = cache.get(key)
        except Exception:  # Redis down: read from the database
            logger.warning("chart cache unavailable", exc_info=True)
            text, key = None, None
        if text is not None:
            return text
    chart = chart_rows(rows, first, last, max_points)
    text = json.dumps(
        {
            "sessionId": session.pk,
            "status": session.status,
            "epochs": chart["epochs"],
            "count": chart["count"],
            "downsampled": chart["downsampled"],
            "maxPoints": max_points,
        }
    )
    if key is not None and chart["downsampled"]:
        try:
            cache.set(key, text, CHART_CACHE_SECONDS)
        except Exception:
            logger.warning("chart cache unavailable", exc_info=True)
    return text


def chart_rows(
    rows: QuerySet[EpochMetric],
    first: int | None = None,
    last: int | None = None,
    max_points: int | None = None,
) -> dict[str, Any]:
    """The epochs of `rows` in [first, last] as API rows, at most `max_points`
    per series.

    A thinned row carries only the metrics chosen at that epoch, so every series
    keeps its own spikes and dips yet has at most `max_points` points.
    """
    with _collector_paused():
        return _chart_rows(rows, first, last, max_points)


def _chart_rows(
    rows: QuerySet[EpochMetric],
    first: int | None,
    last: int | None,
    max_points: int | None,
) -> dict[str, Any]:
    table, connection = _table(rows, first, last)
    if max_points is None or len(table) <= max_points:
        return {
            "count": len(table),
            "downsampled": False,
            "epochs": _api_rows(table, connection),
        }

    columns = list(zip(*table, strict=True))
    series: dict[str, Any] = {
        name: columns[i + 1] for i, name in enumerate(STANDARD_METRICS)
    }
    # Extra metrics come from external runs; most sessions have none.
    extras = {
        index: json.loads(text)
        for index, text in enumerate(columns[_EXTRA])
        if text != _NO_EXTRA
    }
    for name in sorted({name for extra in extras.values() for name in extra}):
        if name not in series:
            series[name] = [
                extras[index].get(name) if index in extras else None
                for index in range(len(table))
            ]
    chosen: dict[int, list[str]] = {}
    for name, indices in downsample_series(series, max_points).items():
        for index in indices:
            chosen.setdefault(index, []).append(name)
    result = []
    for index in sorted(chosen):
        row = table[index]
        result.append(
            {
                "epoch": row[0],
                "metrics": {name: series[name][index] for name in chosen[index]},
                "duration": row[_DURATION],
                "time": _iso(row[_CREATED], connection),
            }
        )
    return {"count": len(table), "downsampled": True, "epochs": result}


def _pieces(table: list[tuple]) -> Iterator[list[tuple]]:
    for start in range(0, len(table), EXPORT_ROWS_PER_PIECE):
        yield table[start : start + EXPORT_ROWS_PER_PIECE]


def csv_lines(session: TrainingSession) -> Iterator[str]:
    """The session's metrics as CSV text, header first, one epoch per line."""
    with _collector_paused():
        table, connection = _table(session.epochs.all())
    extras = {
        index: json.loads(row[_EXTRA])
        for index, row in enumerate(table)
        if row[_EXTRA] != _NO_EXTRA
    }
    extra_names = sorted(
        {
            name
            for extra in extras.values()
            for name in extra
            if name not in STANDARD_METRICS
        }
    )
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["epoch", *STANDARD_METRICS, *extra_names, "duration", "time"])
    yield buffer.getvalue()
    start = 0
    for piece in _pieces(table):
        buffer.seek(0)
        buffer.truncate()
        # csv writes None as an empty cell and a float as repr() does.
        writer.writerows(
            [
                *row[:_DURATION],
                *(
                    [extras[index].get(name) for name in extra_names]
                    if index in extras
                    else [None] * len(extra_names)
                ),
                row[_DURATION],
                _iso(row[_CREATED], connection),
            ]
            for index, row in enumerate(piece, start)
        )
        start += len(piece)
        yield buffer.getvalue()


def json_chunks(session: TrainingSession) -> Iterator[str]:
    """The session and all its epochs as one JSON document, written in pieces."""
    with _collector_paused():
        table, connection = _table(session.epochs.all())
    head = json.dumps({"session": session.as_dict()})[:-1]
    yield head + ', "epochs": ['
    separator = ""
    for piece in _pieces(table):
        # One dumps per piece: its "[" and "]" dropped, pieces joined by ", ".
        with _collector_paused():
            text = json.dumps(_api_rows(piece, connection))[1:-1]
        yield separator + text
        separator = ", "
    yield "]}\n"
