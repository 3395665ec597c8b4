"""The run-logging API's one-epoch call, answered on daphne's event loop.

A training loop that logs every epoch as it ends (what MLflow's log_metric is
used for) makes one POST /api/ml/runs/<id>/metrics per epoch. Through Django that
call took ~2.1 ms on SQLite and ~3.3 on PostgreSQL here, ~1.1 ms of which a
request that does no work at all pays (the hop to a request thread and back, the
middleware, the URL resolver): the floor under any view (bench/NOTES.md). This
lane answers the common case before any of that, on the event loop: a bearer
token, a running run of the token's user, one new epoch above the run's counter,
a plain ASCII JSON body. It stores what the view stores (the epoch, the run's
counters, the event), with the functions the view uses to make the event and the
answer, and pushes the event as the view does.

Anything else (an error to report, a retry of a stored epoch, a token whose
last-use time is due, a busy SQLite database, a run changed by someone else
meanwhile, an SSL redirect, a disallowed Host) declines here before anything is
written, and goes to the view as usual: the lane never answers differently from
the view, only sooner (tests/test_api_fastlog.py compares the two).

SQLite: the statements block the loop, ~0.2 ms a call, but never wait: the write
lock is tried once (a busy database goes to the view, which waits on its
thread), and nothing syncs (WAL with synchronous=NORMAL, and no checkpoints on
this connection: the view's and the worker's connections run them, at least once
a minute when the token's last use is written). PostgreSQL: one awaited round
trip on the loop's own connections, an autocommitted statement that writes only
if the run's row is still the version the lane wrote last (_KnownRuns); a run it
does not know, or one changed since, is read first.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import DEFAULT_DB_ALIAS, connections
from django.http.request import split_domain_port, validate_host
from django.utils.timezone import now

from sessions import api, catalog, events
from sessions.auth import bearer_token
from sessions.metrics import json_text
from sessions.models import (
    _SQLITE_EPOCH_COLUMNS,
    ApiToken,
    EpochMetric,
    StoredEpochs,
    TrainingEvent,
    TrainingSession,
    _reader,
    _session_update,
    _sqlite_epoch_insert_sql,
    _sqlite_epoch_values,
)

logger = logging.getLogger(__name__)

_PATH = re.compile(r"/api/ml/runs/([0-9]{1,18})/metrics")
# A one-epoch body is ~100-600 bytes; anything larger is a batch: the view's.
MAX_BODY = 4096
# As sessions.auth.user_for_token: the token's last-use time is written at most
# once a minute, and a call that is due to write it goes to the view.
_LAST_USED_EVERY = timedelta(seconds=60)

Answer = tuple[int, list[tuple[bytes, bytes]], bytes]


def enabled() -> bool:
    return settings.MLTRACK_FAST_LOG and _database().vendor in ("sqlite", "postgresql")


@functools.cache
def _database() -> Any:
    """The default database's wrapper for the lane's settings, operations and
    adapters; never connected (the lane has connections of its own). One per
    process: connections[...] makes a wrapper in each asyncio task, so once per
    request here, ~80 us of the call (bench/NOTES.md). Its settings are the
    ones every wrapper shares (a test database's name included)."""
    return connections.create_connection(DEFAULT_DB_ALIAS)


def may_answer(scope: dict[str, Any]) -> bool:
    """Whether this request may be a one-epoch log call the lane answers: worth
    reading its body for. Headers only; answer() decides."""
    if not enabled() or scope["method"] != "POST" or scope.get("root_path"):
        return False
    if not _PATH.fullmatch(scope["path"]):
        return False
    kind = _header(scope, b"content-type")
    if kind is not None and kind.split(";")[0].strip().lower() != "application/json":
        return False
    length = _header(scope, b"content-length")
    if length is None or not length.isdigit() or int(length) > MAX_BODY:
        return False
    return bearer_token(_header(scope, b"authorization")) is not None


async def answer(scope: dict[str, Any], body: bytes) -> Answer | None:
    """The response to a one-epoch log call, or None for the view to answer.

    None means nothing was written. Once the epoch is committed the lane answers
    whatever happens: the view would count it again as a duplicate."""
    request = _plain_request(scope, body)
    if request is None:
        return None
    connection = _database()
    if connection.vendor == "sqlite":
        stored = _store_sqlite(connection, *request)
    else:
        stored = await _store_postgresql(connection, *request)
    if stored is None:
        return None
    session, text, event_id = stored
    try:
        events._push(session, "training_progress", text)
        if event_id % events.PRUNE_EVERY == 0:
            # As events._store does, off the loop: a DELETE of a week's events.
            asyncio.get_running_loop().run_in_executor(None, _prune_events)
        # What api._run_response answers, with the session's dict the event
        # made (as_progress_dict: the instance has not changed since): as_dict()
        # twice was a sixth of the lane's time, most of it reverse() for the URL.
        # The bytes JsonResponse makes, without the response object (~60 us).
        shown = session.as_progress_dict()
        content = json.dumps(
            api.run_answer(session, shown, received=1, stored=1, duplicates=0),
            cls=DjangoJSONEncoder,
        ).encode()
        return 200, _headers(scope, content), content
    except Exception:  # a bug: the epoch is stored, so answer as the view would
        logger.exception("API %s failed", scope["path"])
        response = api.error_response(500, "Internal error; it has been logged")
        return 500, _headers(scope, response.content), response.content


def _plain_request(
    scope: dict[str, Any], body: bytes
) -> tuple[str, int, tuple[int, dict[str, Any], float | None]] | None:
    """(token, run id, the one epoch) of a request the view would accept as it is
    and answer the way the lane does, or None."""
    if _checks_request_differently():
        return None
    if not _allowed_host(scope) or (
        settings.SECURE_SSL_REDIRECT and not _is_secure(scope)
    ):
        return None
    # The view walks a body with escapes or non-ASCII bytes for text the
    # database cannot store: leave those to it.
    if not body.isascii() or b"\\u" in body or b"\x00" in body:
        return None
    token = bearer_token(_header(scope, b"authorization"))
    if token is None:
        return None
    # At most 18 digits (_PATH): always below api.MAX_ID, as the view requires.
    session_id = int(_PATH.fullmatch(scope["path"])[1])
    try:
        parsed = api._parse_json(body)
        if not isinstance(parsed, dict):
            return None
        rows = api._clean_epochs(parsed)
    except (ValueError, api.ApiError):
        return None
    if len(rows) != 1:
        return None
    return token, session_id, rows[0]


def _checks_request_differently() -> bool:
    """Settings under which the middleware does more than the lane repeats."""
    return bool(
        settings.USE_X_FORWARDED_HOST
        or settings.DISALLOWED_USER_AGENTS
        or settings.PREPEND_WWW
    )


def _next_state(
    session: TrainingSession, epoch: tuple[int, dict[str, Any], float | None]
) -> tuple[dict[str, Any], list[Any], str] | None:
    """For one new epoch of a running external run: the session's changed
    columns, the epoch's row values and its event's text, as
    TrainingSession.record_epochs and events.push_epochs make them; the instance
    takes the changes. None for a call the view should answer."""
    number, metrics, duration = epoch
    writer = events._writer()
    if (
        session.model_type != catalog.EXTERNAL_MODEL_TYPE
        or session.status
        not in (TrainingSession.Status.RUNNING, TrainingSession.Status.STOPPING)
        or number <= session.current_epoch  # a retry or a late epoch
        or writer.queued > writer.done  # events.push_epochs would wait for it
    ):
        return None
    moment = now()
    (row,) = StoredEpochs(session.pk, [epoch], moment)
    connection = _database()
    # The worker's row values, made for SQLite's INSERT; converted through this
    # connection's own adapters, so PostgreSQL's statement takes them too (with
    # a cast to each column's type, _postgres_write_sql).
    values = _sqlite_epoch_values(
        connection, session.pk, number, metrics, duration, moment
    )
    best = session.best_val_accuracy
    accuracy = metrics.get("val_accuracy")
    if accuracy is not None and (best is None or accuracy > best):
        best = accuracy
    changes: dict[str, Any] = {
        "heartbeat_at": moment,
        "current_epoch": number,
        "final_metrics": row.metrics,
        "best_val_accuracy": best,
    }
    for name, value in changes.items():
        setattr(session, name, value)
    (event,) = events._epochs_events(session, [row], session.external_stats())
    return changes, values, json_text(event)


def _store_sqlite(
    connection: Any,
    raw_token: str,
    session_id: int,
    epoch: tuple[int, dict[str, Any], float | None],
) -> tuple[TrainingSession, str, int] | None:
    """Store the epoch, its session's new counters and its event in one
    transaction on the loop's own connection; return the session as it is now,
    the event's text and id, or None (nothing written)."""
    try:
        database = _sqlite_database(connection)
    except sqlite3.Error:  # the view reports it
        logger.warning("Fast log call could not open the database", exc_info=True)
        return None
    cursor = database.cursor()
    try:
        try:
            cursor.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:  # another writer: the view waits for it
            return None
        try:
            stored = _write_sqlite(connection, cursor, raw_token, session_id, epoch)
        except BaseException:
            cursor.execute("ROLLBACK")
            raise
        if stored is None:
            cursor.execute("ROLLBACK")
            return None
        cursor.execute("COMMIT")
        return stored
    except Exception:
        # Nothing was written (the transaction rolled back or never began), so
        # the view answers; a broken connection is opened afresh next time.
        logger.warning("Fast log call failed; the view answers", exc_info=True)
        _sqlite_databases.pop(connection.settings_dict["NAME"], None)
        database.close()
        return None
    finally:
        cursor.close()


def _write_sqlite(
    connection: Any,
    cursor: sqlite3.Cursor,
    raw_token: str,
    session_id: int,
    epoch: tuple[int, dict[str, Any], float | None],
) -> tuple[TrainingSession, str, int] | None:
    # Read under the write lock: the counters cannot move before the UPDATE.
    sql, params, make = _session_query(connection, raw_token, session_id)
    cursor.execute(sql, params)
    row = cursor.fetchone()
    if row is None:
        return None
    session = make(row)
    state = _next_state(session, epoch)
    if state is None:
        return None
    changes, values, text = state
    cursor.execute(_sqlite_epoch_insert_sql(1), [*values, session_id])
    if cursor.rowcount != 1:
        return None
    sql, params = _session_update(connection, session_id, changes)
    cursor.execute(sql.replace("%s", "?"), params)
    cursor.execute(
        f'INSERT INTO "{TrainingEvent._meta.db_table}"'
        ' ("session_id", "owner_id", "type", "data", "created")'
        " VALUES (?, ?, ?, ?, ?)",
        [session_id, session.owner_id, "training_progress", text, values[-1]],
    )
    return session, text, cursor.lastrowid


def _session_query(
    connection: Any, raw_token: str, session_id: int
) -> tuple[str, list[Any], Callable[[Any], TrainingSession]]:
    """(SQL, parameters, a row's instance) of the run `session_id` of the active
    user of a live token whose last use need not be written now
    (sessions.auth.user_for_token writes it): the view's two lookups, joined.
    On PostgreSQL the row ends with the run's row version (xmin), which the
    instance does not take."""
    _, make = _reader(TrainingSession, connection)
    return (
        _session_sql(connection.vendor),
        [session_id, *_token_params(connection, raw_token)],
        make,
    )


def _token_params(connection: Any, raw_token: str) -> list[Any]:
    due = connection.ops.adapt_datetimefield_value(now() - _LAST_USED_EVERY)
    return [ApiToken.hash(raw_token), due]


@functools.cache
def _session_sql(vendor: str) -> str:
    select, _ = _reader(TrainingSession, _database())
    sessions = TrainingSession._meta.db_table
    if vendor == "postgresql":
        select += f', "{sessions}"."xmin"::text'
    sql = f'SELECT {select} FROM "{sessions}" {_token_join_sql()}'
    return sql.replace("%s", "?") if vendor == "sqlite" else sql


def _token_join_sql() -> str:
    """The run's owner must hold the token (parameters: the run's id, the
    token's hash, the last-use time before which a use is due to be written)."""
    sessions = TrainingSession._meta.db_table
    tokens = ApiToken._meta.db_table
    users = ApiToken._meta.get_field("user").related_model._meta.db_table
    return (
        f'INNER JOIN "{tokens}" ON "{tokens}"."user_id" = "{sessions}"."owner_id"'
        f' INNER JOIN "{users}" ON "{users}"."id" = "{tokens}"."user_id"'
        f' WHERE "{sessions}"."id" = %s AND "{tokens}"."key_hash" = %s'
        f' AND "{tokens}"."revoked_at" IS NULL AND "{tokens}"."last_used_at" > %s'
        f' AND "{users}"."is_active"'
    )


class _KnownRuns:
    """The runs the lane wrote last on PostgreSQL, as it left them: the instance
    and the row version (xmin) of its write. A call for such a run skips the
    read: its write is conditioned on that version, which any other change to
    the row (a stop, the view, the admin) replaces, and on the token as the
    read would check it. A miss costs one statement that writes nothing.

    An entry is taken out while a call uses it, so two calls for one run never
    share an instance (the second reads the run afresh). Entries older than
    MAX_AGE are not used: a version number could only come back after billions
    of transactions, and this bounds how long a run's row is trusted."""

    MOST = 1000
    MAX_AGE = 60.0

    def __init__(self) -> None:
        self.runs: dict[tuple[Any, int], tuple[TrainingSession, str, float]] = {}

    def take(self, database_name: Any, session_id: int) -> tuple[Any, str] | None:
        known = self.runs.pop((database_name, session_id), None)
        if known is None or time.monotonic() - known[2] > self.MAX_AGE:
            return None
        return known[0], known[1]

    def keep(self, database_name: Any, session: TrainingSession, version: str) -> None:
        if len(self.runs) >= self.MOST:
            del self.runs[next(iter(self.runs))]  # the one left longest ago
        self.runs[(database_name, session.pk)] = (session, version, time.monotonic())


_known_runs = _KnownRuns()


async def _store_postgresql(
    connection: Any,
    raw_token: str,
    session_id: int,
    epoch: tuple[int, dict[str, Any], float | None],
) -> tuple[TrainingSession, str, int] | None:
    """_store_sqlite on PostgreSQL, on one of the loop's own connections,
    awaited: one autocommitted statement that stores the epoch, the counters
    and the event only if the run's row is still the version the lane knows
    (_KnownRuns), with a read of the run first when it knows none (the view's
    transaction takes six round trips, bench/NOTES.md)."""
    try:
        database = await _postgres_connections.take(connection)
    except Exception:  # the database is down: the view answers 503
        logger.warning("Fast log call could not connect", exc_info=True)
        return None
    if database is None:  # all busy: the view has threads
        return None
    name = connection.settings_dict["NAME"]
    healthy = False
    try:
        stored = None
        known = _known_runs.take(name, session_id)
        if known is not None:
            stored = await _write_postgresql(
                database, connection, raw_token, epoch, *known
            )
        if stored is None:  # not known, or changed since: read it
            sql, params, make = _session_query(connection, raw_token, session_id)
            row = await (await database.execute(sql, params, prepare=True)).fetchone()
            if row is not None:
                stored = await _write_postgresql(
                    database, connection, raw_token, epoch, make(row[:-1]), row[-1]
                )
        healthy = True
    except Exception:
        # Each statement failed as a whole (autocommit): nothing was written.
        logger.warning("Fast log call failed; the view answers", exc_info=True)
        return None
    finally:
        _postgres_connections.give_back(database, healthy)
    if stored is None:
        return None
    session, text, event_id, version = stored
    _known_runs.keep(name, session, version)
    return session, text, event_id


async def _write_postgresql(
    database: Any,
    connection: Any,
    raw_token: str,
    epoch: tuple[int, dict[str, Any], float | None],
    session: TrainingSession,
    version: str,
) -> tuple[TrainingSession, str, int, str] | None:
    """(the run as it is now, the event's text and id, the row's new version),
    or None if nothing was written: the run is not one the lane takes, or its
    row is no longer `version` (the instance is then left out of date)."""
    state = _next_state(session, epoch)
    if state is None:
        return None
    changes, values, text = state
    sql, params = _postgres_write(
        connection, raw_token, session, version, changes, values, text
    )
    row = await (await database.execute(sql, params, prepare=True)).fetchone()
    if row is None:
        return None
    return session, text, row[0], row[1]


def _postgres_write(
    connection: Any,
    raw_token: str,
    session: TrainingSession,
    version: str,
    changes: dict[str, Any],
    values: list[Any],
    text: str,
) -> tuple[str, list[Any]]:
    """One statement (_postgres_write_sql) and its parameters."""
    _, update_params = _session_update(connection, session.pk, changes)
    params = [
        session.pk,
        *_token_params(connection, raw_token),
        version,
        *values,
        *update_params,
        session.owner_id,
        "training_progress",
        text,
        values[-1],
        events.EVENT_ORDER_LOCK,
    ]
    return _postgres_write_sql(tuple(changes)), params


@functools.cache
def _postgres_write_sql(changed: tuple[str, ...]) -> str:
    """Lock the run's row if it is still the version seen and the token still
    lets its owner in, insert the epoch, move the counters, and store the event
    under the event-order lock (events._store), returning the event's id and
    the row's new version; no row if the run had changed. Parameters in a
    SELECT list are cast to their column's type: the server cannot infer it
    there."""
    connection = _database()
    sessions = TrainingSession._meta.db_table

    def cast(model: Any, name: str) -> str:
        return f"%s::{model._meta.get_field(name).cast_db_type(connection)}"

    epoch_columns = ", ".join(f'"{name}"' for name in _SQLITE_EPOCH_COLUMNS)
    epoch_values = ", ".join(cast(EpochMetric, name) for name in _SQLITE_EPOCH_COLUMNS)
    update, _ = _session_update(connection, 0, dict.fromkeys(changed))
    return (
        f'WITH held AS (SELECT "{sessions}"."id" FROM "{sessions}"'
        f' {_token_join_sql()} AND "{sessions}"."xmin" = %s::text::xid'
        f' FOR NO KEY UPDATE OF "{sessions}"),'
        f' new AS (INSERT INTO "{EpochMetric._meta.db_table}" ({epoch_columns})'
        f' SELECT {epoch_values} FROM held RETURNING "epoch"),'
        f" moved AS ({update} AND EXISTS (SELECT 1 FROM new)"
        ' RETURNING "id", "xmin"::text AS version),'
        f' logged AS (INSERT INTO "{TrainingEvent._meta.db_table}"'
        ' ("session_id", "owner_id", "type", "data", "created")'
        f' SELECT moved."id", {cast(TrainingEvent, "owner_id")},'
        f" {cast(TrainingEvent, 'type')}, %s::jsonb, {cast(TrainingEvent, 'created')}"
        " FROM (SELECT pg_advisory_xact_lock(%s::bigint)) AS event_order, moved"
        ' RETURNING "id")'
        " SELECT logged.id, moved.version FROM logged, moved"
    )


class _PostgresConnections:
    """Each event loop's own connections for the lane: autocommit, prepared
    statements, Django's adapters (so rows read as the ORM reads them). A call
    that finds them all busy goes to the view."""

    MOST = 4

    def __init__(self) -> None:
        self.idle: dict[Any, list[Any]] = {}
        self.opened: dict[Any, int] = {}

    async def take(self, connection: Any) -> Any | None:
        import psycopg

        key = (asyncio.get_running_loop(), connection.settings_dict["NAME"])
        idle = self.idle.setdefault(key, [])
        if idle:
            return idle.pop()
        if self.opened.get(key, 0) >= self.MOST:
            return None
        params = connection.get_connection_params()
        params.pop("cursor_factory", None)  # a synchronous cursor
        self.opened[key] = self.opened.get(key, 0) + 1
        try:
            database = await psycopg.AsyncConnection.connect(**params, autocommit=True)
            # As Django's connections: dates in UTC.
            await database.execute("SET TIME ZONE 'UTC'")
        except BaseException:
            self.opened[key] -= 1
            raise
        database._fastlog_key = key
        return database

    def give_back(self, database: Any, healthy: bool) -> None:
        key = database._fastlog_key
        if healthy and not database.closed:
            self.idle[key].append(database)
            return
        self.opened[key] -= 1
        database.pgconn.finish()

    def close_all(self) -> None:
        """Close every idle connection (tests: the test database is dropped at
        the end, which a connection to it would prevent)."""
        for key, idle in self.idle.items():
            for database in idle:
                database.pgconn.finish()
            self.opened[key] -= len(idle)
            idle.clear()


_postgres_connections = _PostgresConnections()


def _prune_events() -> None:
    try:
        TrainingEvent.objects.prune(events.EVENT_RETENTION)
    except Exception:
        logger.warning("Could not prune old events", exc_info=True)
    finally:
        connections[DEFAULT_DB_ALIAS].close()  # this thread's, opened for this


_sqlite_databases: dict[str, sqlite3.Connection] = {}


def _sqlite_database(connection: Any) -> sqlite3.Connection:
    """The event loop's own SQLite connection: autocommit, no busy timeout (the
    loop never waits for a lock) and no checkpoints (request threads and the
    worker run those: a checkpoint writes the database file and syncs it)."""
    name = connection.settings_dict["NAME"]
    database = _sqlite_databases.get(name)
    if database is None:
        database = sqlite3.connect(
            name, timeout=0, isolation_level=None, check_same_thread=False
        )
        database.execute("PRAGMA synchronous=NORMAL")
        database.execute("PRAGMA wal_autocheckpoint=0")
        _sqlite_databases[name] = database
    return database


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    """A header's value, or None; repeated headers joined as Django joins them."""
    values = [value for key, value in scope["headers"] if key.lower() == name]
    if not values:
        return None
    return b",".join(values).decode("latin-1")


def _allowed_host(scope: dict[str, Any]) -> bool:
    """HttpRequest.get_host()'s check (without X-Forwarded-Host, which
    _checks_request_differently leaves to the view)."""
    host = _header(scope, b"host")
    if host is None:
        return False
    allowed = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed:
        allowed = [".localhost", "127.0.0.1", "[::1]"]
    domain, _ = split_domain_port(host)
    return bool(domain) and validate_host(domain, allowed)


def _is_secure(scope: dict[str, Any]) -> bool:
    """HttpRequest.is_secure(), with the settings' SECURE_PROXY_SSL_HEADER."""
    if settings.SECURE_PROXY_SSL_HEADER:
        name, secure_value = settings.SECURE_PROXY_SSL_HEADER
        header = name.removeprefix("HTTP_").lower().replace("_", "-").encode()
        value = _header(scope, header)
        if value is not None:
            return value.split(",", 1)[0].strip() == secure_value
    return scope.get("scheme") == "https"


def _headers(scope: dict[str, Any], content: bytes) -> list[tuple[bytes, bytes]]:
    """The headers the view's JSON response leaves the middleware with
    (SecurityMiddleware, CommonMiddleware, XFrameOptionsMiddleware)."""
    headers = {
        "Content-Type": "application/json",
        "X-Frame-Options": getattr(settings, "X_FRAME_OPTIONS", "DENY").upper(),
        "Content-Length": str(len(content)),
    }
    if settings.SECURE_HSTS_SECONDS and _is_secure(scope):
        value = f"max-age={settings.SECURE_HSTS_SECONDS}"
        if settings.SECURE_HSTS_INCLUDE_SUBDOMAINS:
            value += "; includeSubDomains"
        if settings.SECURE_HSTS_PRELOAD:
            value += "; preload"
        headers["Strict-Transport-Security"] = value
    if settings.SECURE_CONTENT_TYPE_NOSNIFF:
        headers["X-Content-Type-Options"] = "nosniff"
    policy = settings.SECURE_REFERRER_POLICY
    if policy:
        headers["Referrer-Policy"] = ",".join(
            [v.strip() for v in policy.split(",")]
            if isinstance(policy, str)
            else policy
        )
    if settings.SECURE_CROSS_ORIGIN_OPENER_POLICY:
        headers["Cross-Origin-Opener-Policy"] = (
            settings.SECURE_CROSS_ORIGIN_OPENER_POLICY
        )
    return [(name.encode(), value.encode("latin-1")) for name, value in headers.items()]


async def read_body(
    receive: Callable[[], Awaitable[dict]],
) -> tuple[bytes | None, Callable[[], Awaitable[dict]]] | None:
    """The request's body (None if it is longer than MAX_BODY: a client whose
    Content-Length said less) and a receive() that gives the whole body again,
    for the view; None if the client went away."""
    chunks: list[bytes] = []
    size = 0
    more = True
    while more and size <= MAX_BODY:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        more = message.get("more_body", False)
    body = b"".join(chunks)
    replayed = False

    async def replay() -> dict:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": more}

    return (None if more else body), replay
