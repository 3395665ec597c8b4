"""Read a session's epochs for charts and exports without building model instances.

A 100,000-epoch session must open as fast as a short one. Rows come from the
driver as plain tuples: Django's per-row converters (a timestamp parsed from
text on SQLite, JSON decoded on both) cost more than the query itself, so times
and extra metrics are converted only for the rows that are sent. A thinned chart
goes further: its metrics become numpy arrays, from one packed value on
PostgreSQL, and only the rows it sends become dicts. Exports are written in
large pieces: Django's ASGI handler sends each piece of a streamed response as
a message of its own.
"""

from __future__ import annotations

import csv
import gc
import io
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from itertools import repeat
from operator import itemgetter
from typing import Any, NamedTuple

import numpy as np
import orjson
from django.core.cache import cache
from django.core.exceptions import EmptyResultSet
from django.db import DatabaseError, connections
from django.db.models import Count, Max, QuerySet

from sessions.downsample import kept_indices
from sessions.models import (
    STANDARD_METRICS,
    EpochMetric,
    StoredChart,
    TrainingSession,
)

logger = logging.getLogger(__name__)

CHART_MAX_POINTS = 1000
# A finished session's thinned chart is kept this long in the cache (Redis).
CHART_CACHE_SECONDS = 24 * 3600
# Rows per piece of an export: about 100 KB of text.
EXPORT_ROWS_PER_PIECE = 1000
_COLUMNS = ("epoch", *STANDARD_METRICS, "duration", "created", "extra")
# Positions in a row of a read (_History.rows).
_DURATION, _TIME = 9, 10
_NO_EXTRA = "{}"
_STANDARD = frozenset(STANDARD_METRICS)
_QUOTED_STANDARD = tuple(f'"{name}"' for name in STANDARD_METRICS)
_QUOTED_METRICS = ", ".join(("epoch", *_QUOTED_STANDARD, "duration"))
# A row of _postgresql_columns' packed bytes: PostgreSQL's send formats, which
# are big-endian; a time is microseconds since 2000-01-01 UTC.
_PACKED_ROW = np.dtype(
    [
        ("epoch", ">i8"),
        *((name, ">f8") for name in STANDARD_METRICS),
        ("duration", ">f8"),
        ("created", ">i8"),
    ]
)
_PACKED_COLUMNS = " || ".join(
    [
        "int8send(epoch)",
        *(
            f"float8send(coalesce({name}, 'NaN'))"
            for name in (*_QUOTED_STANDARD, "duration")
        ),
        "timestamptz_send(created)",
    ]
)
_POSTGRESQL_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_POSTGRESQL_EPOCH_IN_UNIX_MICROS = np.int64(946_684_800_000_000)


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


class _History(NamedTuple):
    """Every epoch of a read, in epoch order, as the API and the exports send it."""

    # (epoch, *standard metrics, duration, ISO time), None where missing.
    rows: list[tuple]
    # The other metrics of the rows that have any, by position in `rows`.
    extras: dict[int, dict[str, Any]]


_METRICS_OF_ROW = itemgetter(slice(1, _DURATION))
# SQLite's text of a time as Django writes it (UTC, "2026-11-26 10:53:00" with
# ".123456" unless it is zero) becomes the ISO text the API sends in SQL: per row
# a fraction of fromisoformat() and isoformat(). Any other text goes through those.
_SQLITE_DJANGO_TIME = (
    "length(created) IN (19, 26) AND substr(created, 11, 1) = ' '"
    " AND substr(created, 20) <> '.000000'"
)
_SQLITE_TIMES = (
    f"CASE WHEN {_SQLITE_DJANGO_TIME} THEN replace(created, ' ', 'T') || '+00:00' END,"
    f" CASE WHEN {_SQLITE_DJANGO_TIME} THEN NULL ELSE CAST(created AS text) END"
)
# _PACKED_ROW and which of its floats were NULL (bit i: the i-th of the standard
# metrics, then duration): an export tells a missing value from a stored NaN.
_PACKED_HISTORY_ROW = np.dtype([*_PACKED_ROW.descr, ("nulls", ">i4")])
_NULL_BITS = " | ".join(
    f"(({name} IS NULL)::int << {bit})"
    for bit, name in enumerate((*_QUOTED_STANDARD, "duration"))
)


def _history(
    rows: QuerySet[EpochMetric], first: int | None = None, last: int | None = None
) -> _History:
    """The epochs of `rows` in [first, last], in one query.

    Rows are made without Django's converters and, on PostgreSQL, from one packed
    value (see _postgresql_columns): a row of Python objects per epoch cost the
    driver about 2 us a value there.
    """
    connection, sql, params = _select(_in_range(rows, first, last))
    if sql is None:
        return _History([], {})
    if connection.vendor == "postgresql":
        return _postgresql_history(connection, sql, params)
    return _sqlite_history(connection, sql, params)


def _sqlite_history(connection: Any, sql: str, params: Any) -> _History:
    times = (
        _SQLITE_TIMES if connection.timezone is UTC else "NULL, CAST(created AS text)"
    )
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {_QUOTED_METRICS}, {times}, NULLIF(extra, '{_NO_EXTRA}')"
            f" FROM ({sql}) AS t ORDER BY epoch",
            params,
        )
        table = cursor.fetchall()
    # Columns after the duration: the ISO time made in SQL, the time's text when
    # SQL could not make it, the other metrics.
    other_time, extra = _TIME + 1, _TIME + 2
    rows = [row[:other_time] for row in table]
    extras = {}
    iso = _iso_function(connection)
    # Rows with a time written some other way or with other metrics: few or none.
    for index, row in enumerate(table):
        if row[other_time] is not None or row[extra] is not None:
            if row[other_time] is not None:
                rows[index] = (*row[:_TIME], iso(row[other_time]))
            if row[extra] is not None:
                extras[index] = json.loads(row[extra])
    return _History(rows, extras)


def _postgresql_history(connection: Any, sql: str, params: Any) -> _History:
    table, extras = _packed_rows(
        connection,
        sql,
        params,
        f"{_PACKED_COLUMNS} || int4send({_NULL_BITS})",
        _PACKED_HISTORY_ROW,
    )
    epochs = table["epoch"].astype(np.int64)
    columns = []
    for bit, name in enumerate((*STANDARD_METRICS, "duration")):
        values = table[name].astype(np.float64)
        missing = (table["nulls"] & (1 << bit)) != 0
        if missing.any():
            values = values.astype(object)
            values[missing] = None
        columns.append(values.tolist())
    times = _iso_times(table["created"], connection.timezone, slice(None))
    return _History(
        list(zip(epochs.tolist(), *columns, times, strict=True)),
        {int(np.searchsorted(epochs, epoch)): extra for epoch, extra in extras},
    )


def _packed_rows(
    connection: Any, sql: str | None, params: Any, packed: str, dtype: np.dtype
) -> tuple[np.ndarray, list[Any]]:
    """The rows of `sql` (none if None) as one value of packed rows, each the
    expression `packed` in its columns' send (binary) format, read as `dtype`
    in epoch order, and the [epoch, extra] pairs of the rows with extra metrics.

    One value instead of a row of Python objects per epoch: the driver made those
    at about 2 us a value, 40-60 ms for 20,000 epochs here."""
    data, extras = None, None
    if sql is not None:
        data, extras = _fetchone_binary(
            connection,
            f"SELECT string_agg({packed}, ''),"
            " (json_agg(json_build_array(epoch, extra))"
            f" FILTER (WHERE extra <> '{_NO_EXTRA}'::jsonb))::text FROM ({sql}) AS t",
            params,
        )
    table = np.frombuffer(data or b"", dtype=dtype)
    if (np.diff(table["epoch"]) <= 0).any():
        table = table[np.argsort(table["epoch"], kind="stable")]
    return table, json.loads(extras or "[]")


def _select(rows: QuerySet[EpochMetric]) -> tuple[Any, str | None, Any]:
    """The connection, SQL and parameters that read _COLUMNS of `rows` (SQL None
    when no row can match)."""
    connection = connections[rows.db]
    if connection.vendor == "postgresql":
        # Unordered: a run's rows are stored mostly in epoch order, and sorting
        # them in numpy when they are not costs less than a sort by PostgreSQL,
        # which the plan for a table without statistics yet did (4-6 ms).
        rows = rows.order_by()
    query = rows.values_list(*_COLUMNS).query
    try:
        sql, params = query.get_compiler(connection=connection).as_sql()
    except EmptyResultSet:  # a bound no row can meet, e.g. beyond the column's range
        return connection, None, ()
    return connection, sql, params


def _iso_function(connection: Any) -> Callable[[Any], str | None]:
    """How a driver's created value becomes the ISO text the API sends, as Django
    would convert it: SQLite's is naive text in the connection's time zone,
    psycopg's a datetime."""
    # A property that takes 2 us, and an ISO text is 1 us when made by hand.
    zone = connection.timezone
    suffix = "+00:00" if zone is UTC else None

    def iso(created: Any) -> str | None:
        if created is None:
            return None
        if isinstance(created, str):
            created = datetime.fromisoformat(created)
            if suffix is not None and created.tzinfo is None:
                # replace(tzinfo=) costs more than the rest together.
                return created.isoformat() + suffix
            created = created.replace(tzinfo=zone)
        return created.isoformat()

    return iso


def _api_rows(history: _History) -> list[dict[str, Any]]:
    """API rows ({epoch, metrics, duration, time}) of a read."""
    rows = history.rows
    # The metrics' dicts made by map() and zip(), without a Python loop.
    metrics = list(
        map(dict, map(zip, repeat(STANDARD_METRICS), map(_METRICS_OF_ROW, rows)))
    )
    for index, extra in history.extras.items():
        metrics[index].update(extra)
    return [
        {
            "epoch": row[0],
            "metrics": values,
            "duration": row[_DURATION],
            "time": row[_TIME],
        }
        for row, values in zip(rows, metrics, strict=True)
    ]


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
    The whole run's answer is also stored in the database (StoredChart), so the
    first read after Redis was emptied reads one row, not every epoch.
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
    whole_run = key is not None and last is None and (first or 0) <= 1
    if whole_run:
        text = (
            StoredChart.objects.filter(session=session, key=key)
            .values_list("text", flat=True)
            .first()
        )
        if text is not None:
            _cache_set(key, text)
            return text
    chart = chart_rows(rows, first, last, max_points)
    text = json_text(
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
        _cache_set(key, text)
        if whole_run:
            _store_chart(session, key, text)
    return text


def _cache_set(key: str, text: str) -> None:
    try:
        cache.set(key, text, CHART_CACHE_SECONDS)
    except Exception:
        logger.warning("chart cache unavailable", exc_info=True)


def _store_chart(session: TrainingSession, key: str, text: str) -> None:
    """Keep a finished session's chart answer in the database (see chart_json),
    in one statement that also settles two readers storing at once. A failure
    (the session deleted meanwhile, SQLite busy too long) costs only the next
    reader a full read."""
    try:
        StoredChart.objects.bulk_create(
            [StoredChart(session=session, key=key, text=text)],
            update_conflicts=True,
            unique_fields=["session"],
            update_fields=["key", "text"],
        )
    except DatabaseError:
        logger.warning("could not store the chart", exc_info=True)


def json_text(value: Any) -> str:
    """JSON text of `value`, by orjson: 1 ms where json took 8 for a 20,000-epoch
    chart, ~2 us where it took ~18 for an epoch's event. It writes NaN as null,
    where json wrote NaN, which no JSON parser takes; NumPy numbers go through
    float(). Integers beyond 64 bits (an external run may log one) go to json."""
    try:
        return orjson.dumps(value, default=float).decode()
    except TypeError:
        return json.dumps(value)


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
    if max_points is not None:
        chart = _thinned_chart(rows, first, last, max_points)
        if chart is not None:
            return chart
    history = _history(rows, first, last)
    return {
        "count": len(history.rows),
        "downsampled": False,
        "epochs": _api_rows(history),
    }


def _thinned_chart(
    rows: QuerySet[EpochMetric], first: int | None, last: int | None, max_points: int
) -> dict[str, Any] | None:
    """chart_rows of more than `max_points` epochs, or None when they fit.

    The standard metrics are thinned as arrays of floats; only the rows sent
    become dicts, and only their times are converted.
    """
    columns = _chart_columns(_in_range(rows, first, last))
    count = len(columns.epochs)
    if count <= max_points:
        return None
    series = dict(zip(STANDARD_METRICS, columns.metrics, strict=True))
    # Extra metrics come from external runs; most sessions have none. Their own
    # values are sent (an integer stays one); the floats only choose the points.
    extras: dict[str, dict[int, Any]] = {}
    for index, extra in columns.extras:
        for name, value in extra.items():
            extras.setdefault(name, {})[index] = value
    for name in sorted(extras):
        if name not in series:
            column = np.full(count, np.nan)
            column[list(extras[name])] = list(extras[name].values())
            series[name] = column
    chosen: dict[int, dict[str, Any]] = {}
    for name, column in series.items():
        indices = kept_indices(column, max_points).tolist()
        if name in _STANDARD:
            values = column[indices].tolist()
        else:
            values = [extras[name][index] for index in indices]
        for index, value in zip(indices, values, strict=True):
            if index in chosen:
                chosen[index][name] = value
            else:
                chosen[index] = {name: value}
    order = sorted(chosen)
    durations = columns.durations
    result = []
    for index, epoch, time in zip(
        order, columns.epochs[order].tolist(), columns.times(order), strict=True
    ):
        duration = durations[index]
        result.append(
            {
                "epoch": epoch,
                "metrics": chosen[index],
                # NaN is PostgreSQL's missing duration here (see _postgresql_columns).
                "duration": None if duration != duration else duration,
                "time": time,
            }
        )
    return {"count": count, "downsampled": True, "epochs": result}


class _Columns(NamedTuple):
    """A read of epochs for thinning, one entry per row in epoch order."""

    epochs: np.ndarray
    # One row of floats per standard metric, NaN where missing.
    metrics: np.ndarray
    durations: Sequence[float | None]
    # The ISO times of the rows at some indices.
    times: Callable[[list[int]], list[str | None]]
    # (index, extra metrics) of the rows that have any.
    extras: list[tuple[int, dict[str, Any]]]


def _chart_columns(rows: QuerySet[EpochMetric]) -> _Columns:
    """All of `rows` (in epoch order) in one query, as columns."""
    connection, sql, params = _select(rows)
    if connection.vendor == "postgresql":
        return _postgresql_columns(connection, sql, params)
    return _sqlite_columns(connection, sql, params)


def _sqlite_columns(connection: Any, sql: str | None, params: Any) -> _Columns:
    table = []
    if sql is not None:
        with connection.cursor() as cursor:
            # The time as its text (see _table) and the extra metrics only where
            # there are any: a None costs nothing to make, a str does.
            cursor.execute(
                f"SELECT {_QUOTED_METRICS}, CAST(created AS text),"
                f" NULLIF(extra, '{_NO_EXTRA}') FROM ({sql}) AS t ORDER BY epoch",
                params,
            )
            table = cursor.fetchall()
    if not table:
        empty = np.empty((len(STANDARD_METRICS), 0))
        return _Columns(np.empty(0, np.int64), empty, [], lambda _: [], [])
    columns = list(zip(*table, strict=True))
    last = len(STANDARD_METRICS) + 1
    extras, texts = columns[last + 2], columns[last + 1]
    iso = _iso_function(connection)
    return _Columns(
        epochs=np.array(columns[0], dtype=np.int64),
        metrics=np.array([_floats(column) for column in columns[1:last]]),
        durations=columns[last],
        times=lambda indices: [iso(texts[index]) for index in indices],
        extras=[]
        if extras.count(None) == len(extras)
        else [
            (index, json.loads(text))
            for index, text in enumerate(extras)
            if text is not None
        ],
    )


def _floats(values: Sequence[float | None]) -> np.ndarray:
    """A column of numbers as floats, None as NaN."""
    try:
        # A third faster than np.array(), which checks each value first.
        return np.fromiter(values, dtype=np.float64, count=len(values))
    except TypeError:  # a None
        return np.array(values, dtype=np.float64)


def _postgresql_columns(connection: Any, sql: str | None, params: Any) -> _Columns:
    # NaN stands for a missing value: a stored NaN is missing for a chart too.
    table, extras = _packed_rows(connection, sql, params, _PACKED_COLUMNS, _PACKED_ROW)
    epochs = table["epoch"].astype(np.int64)
    return _Columns(
        epochs=epochs,
        metrics=np.array([table[name] for name in STANDARD_METRICS], np.float64),
        durations=table["duration"].tolist(),
        times=partial(_iso_times, table["created"], connection.timezone),
        extras=[(int(np.searchsorted(epochs, e)), extra) for e, extra in extras],
    )


def _iso_times(micros: np.ndarray, zone: Any, indices: Any) -> list[str]:
    """The ISO texts of some of PostgreSQL's times (microseconds since 2000 UTC)
    in `zone`, as isoformat() writes them (no fraction when it is zero)."""
    if zone is not UTC:
        return [
            (_POSTGRESQL_EPOCH + timedelta(microseconds=moment))
            .astimezone(zone)
            .isoformat()
            for moment in micros[indices].tolist()
        ]
    # numpy writes them four times as fast as isoformat() one by one.
    moments = (micros[indices] + _POSTGRESQL_EPOCH_IN_UNIX_MICROS).astype(
        "datetime64[us]"
    )
    return [
        text[:-7] + "+00:00" if text.endswith(".000000") else text + "+00:00"
        for text in np.datetime_as_string(moments, unit="us").tolist()
    ]


def _fetchone_binary(connection: Any, sql: str, params: Any) -> tuple[Any, ...]:
    """The first row of a query, its values in binary format: bytea as its bytes,
    not hex text of twice the size (5 ms less for 1.8 MB here). Django's cursors
    bind parameters on the client side, which rules that format out."""
    import psycopg

    connection.ensure_connection()
    with (
        connection.wrap_database_errors,
        psycopg.Cursor(connection.connection) as cursor,
    ):
        cursor.execute(sql, params, binary=True)
        return cursor.fetchone()


def _pieces(rows: list[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(rows), EXPORT_ROWS_PER_PIECE):
        yield rows[start : start + EXPORT_ROWS_PER_PIECE]


def csv_lines(session: TrainingSession) -> Iterator[str]:
    """The session's metrics as CSV text, header first, one epoch per line."""
    with _collector_paused():
        history = _history(session.epochs.all())
    extras = history.extras
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
    rows: list[Any] = history.rows
    if not extra_names:
        with _collector_paused():
            lines = _csv_lines(rows)
        for piece in _pieces(lines):
            yield "\r\n".join(piece) + "\r\n"
        return
    rows = [
        (
            *row[:_DURATION],
            *(
                [extras[index].get(name) for name in extra_names]
                if index in extras
                else [None] * len(extra_names)
            ),
            *row[_DURATION:],
        )
        for index, row in enumerate(rows)
    ]
    for piece in _pieces(rows):
        buffer.seek(0)
        buffer.truncate()
        # csv writes None as an empty cell and a float as repr() does.
        writer.writerows(piece)
        yield buffer.getvalue()


def _csv_lines(rows: list[tuple]) -> list[str]:
    """The lines (without ends) csv.writer writes for rows of numbers, None and
    ISO times: a float written by orjson (~50 ns) instead of repr() (~1 us, most
    of an export's time).

    The two write a float alike from 1e-4 up to 1e16 (checked on millions of
    values; orjson writes 1e-05 as 0.00001 and 1e-06 as 1e-6); anything else,
    and None, NaN and infinities (which orjson writes as null), is written as
    csv does.
    """
    if not rows:
        return []
    columns = list(zip(*rows, strict=True))
    cells = [orjson.dumps(columns[0]).decode()[1:-1].split(",")]
    for column in columns[1:_TIME]:
        texts = orjson.dumps(column).decode()[1:-1].split(",")
        values = np.array(column, dtype=np.float64)  # None as NaN
        with np.errstate(invalid="ignore"):
            size = np.abs(values)
            odd = ~((size >= 1e-4) & (size < 1e16)) & (values != 0)
        for index in np.flatnonzero(odd).tolist():
            value = column[index]
            texts[index] = "" if value is None else repr(value)
        cells.append(texts)
    times = columns[_TIME]
    cells.append(times if None not in times else [t or "" for t in times])
    return list(map(",".join, zip(*cells, strict=True)))


def json_chunks(session: TrainingSession) -> Iterator[str]:
    """The session and all its epochs as one JSON document, written in pieces."""
    with _collector_paused():
        epochs = _api_rows(_history(session.epochs.all()))
    head = json.dumps({"session": session.as_dict()})[:-1]
    yield head + ', "epochs": ['
    separator = ""
    for piece in _pieces(epochs):
        # One dumps per piece: its "[" and "]" dropped, pieces joined by ", ".
        yield separator + json.dumps(piece)[1:-1]
        separator = ", "
    yield "]}\n"
