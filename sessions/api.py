"""The JSON API under /api/ml/ (paths from the seed) and run logging for training
loops that run elsewhere (/api/ml/runs).

Every endpoint answers JSON, errors included: {"error": ..., "fields": {...}} with
400 (bad input), 401 (no credentials), 403 (CSRF), 404 (unknown or not yours),
405, 409 (not possible in the session's state), 413 (body too large) and 503 (the
database is busy: retry). The OpenAPI document is sessions/openapi.py.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Callable
from typing import Any

import orjson
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import InterfaceError, OperationalError, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.multipartparser import MultiPartParserError
from django.middleware.csrf import CsrfViewMiddleware
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt

from sessions import catalog, events, metrics, openapi, tasks
from sessions.auth import bearer_token, user_for_token
from sessions.forms import StartTrainingForm
from sessions.models import TrainingEvent, TrainingSession

logger = logging.getLogger(__name__)

# Larger than any id or epoch the database can hold as a signed 64-bit integer would
# overflow SQLite; such values are simply out of range.
MAX_ID = 2**62


class ApiError(Exception):
    def __init__(self, status: int, error: str, fields: dict[str, str] | None = None):
        super().__init__(error)
        self.status = status
        self.error = error
        self.fields = fields or {}


def error_response(status: int, error: str, fields: dict | None = None) -> JsonResponse:
    return JsonResponse({"error": error, "fields": fields or {}}, status=status)


def _csrf_failure(request: HttpRequest) -> str | None:
    """The reason a cookie-authenticated request fails CSRF, or None."""
    checker = CsrfViewMiddleware(lambda r: None)
    checker.process_request(request)
    response = checker.process_view(request, lambda r: None, (), {})
    if response is None:
        return None
    return "CSRF check failed: send the csrftoken cookie's value as X-CSRFToken"


def api_view(methods: tuple[str, ...]) -> Callable:
    """Authenticate (bearer token, or session cookie with CSRF), allow `methods`,
    and turn ApiError and oversized bodies into JSON errors."""

    def decorator(view: Callable) -> Callable:
        @csrf_exempt
        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
            if request.method not in methods:
                response = error_response(405, f"Method {request.method} not allowed")
                response["Allow"] = ", ".join(methods)
                return response
            try:
                # Inside the try: finding the token's user is a query, and a
                # database that is down answers 503 here too, not 500.
                raw = bearer_token(request.headers.get("Authorization"))
                if raw is not None:
                    user = user_for_token(raw)
                    if user is None:
                        return error_response(401, "Invalid or revoked API token")
                    request.user = user
                elif not request.user.is_authenticated:
                    return error_response(
                        401,
                        "Authentication required: log in or send Authorization: "
                        "Bearer <token>",
                    )
                elif request.method not in ("GET", "HEAD", "OPTIONS"):
                    reason = _csrf_failure(request)
                    if reason:
                        return error_response(403, reason)
                # Read the body here, so every endpoint refuses an oversized one,
                # even those that ignore what is sent. Multipart uploads stream to
                # disk under Django's own limits: reading them whole would not.
                if request.content_type != "multipart/form-data":
                    request.body  # noqa: B018
                return view(request, *args, **kwargs)
            except ApiError as exc:
                return error_response(exc.status, exc.error, exc.fields)
            except RequestDataTooBig:
                limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
                return error_response(
                    413, f"Request body too large: at most {limit} bytes"
                )
            except MultiPartParserError as exc:
                # A multipart body Django cannot read (no boundary, say): the
                # client's error, as Django's own handler answers it.
                return error_response(
                    400, f"The request body is not valid multipart/form-data: {exc}"
                )
            except (OperationalError, InterfaceError):
                # "database is locked", a lock timeout or a dropped connection
                # passes: ask for a retry.
                logger.warning(
                    "API %s: database unavailable", request.path, exc_info=True
                )
                response = error_response(503, "Database busy, retry shortly")
                response["Retry-After"] = "1"
                return response
            except Exception:
                # A bug: log it with its traceback, answer JSON rather than a page.
                logger.exception("API %s failed", request.path)
                return error_response(500, "Internal error; it has been logged")

        return wrapper

    return decorator


# A run of 19 digits may be an integer beyond 64 bits, which orjson would turn
# into a float (an epoch of 2**64 would pass as 1.8e19). Bytes mapped so that
# digits read "0", "." stays and the rest read " ": such a run shows as
# _LONG_RUN, unless a "." comes right before it (a fraction's digits).
_DIGITS_AND_DOTS = bytes(
    ord("0") if byte in b"0123456789" else byte if byte == ord(".") else ord(" ")
    for byte in range(256)
)
_LONG_RUN = b" " + b"0" * 19


def _may_hold_long_integer(raw: bytes) -> bool:
    """Whether `raw` has a run of 19 or more digits that may be an integer (a
    string's digits count too). The run of a small float's fraction, as Python
    writes a learning rate (0.00012345678901234567), is not one: such runs sent
    1,000-epoch batches to json, ~1.2 ms slower, and a regular expression's
    scan for them cost ~0.8 ms more than this one (bench/NOTES.md)."""
    return _LONG_RUN in b" " + raw.translate(_DIGITS_AND_DOTS)


def _parse_json(raw: bytes) -> Any:
    """The JSON value of a request body, as json.loads gives it.

    orjson parses a 1,000-epoch log batch in ~0.45 ms where json took ~1.7 (plus
    ~0.3 for the scan for long numbers). Whatever orjson refuses (NaN, 1e400, a
    lone surrogate, UTF-16) or might read differently (integers beyond 64 bits)
    goes to json, so every body reads, and fails, exactly as it did.
    """
    if not _may_hold_long_integer(raw):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return json.loads(raw)


def _json_body(request: HttpRequest) -> dict[str, Any]:
    if not request.body:
        return {}
    try:
        body = _parse_json(request.body)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "The request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object")
    # A NUL or a lone surrogate can only come from a \\u escape, from bytes
    # outside ASCII, or in a UTF-16/32 body (which has NUL bytes): for the plain
    # ASCII bodies clients send, the walk over every key and string is skipped.
    raw = request.body
    unsure = b"\\u" in raw or b"\x00" in raw or not raw.isascii()
    where = _unstorable_text(body) if unsure else None
    if where is not None:
        message = f"{where} contains a NUL character or an unpaired surrogate"
        raise ApiError(400, message, {where: message})
    return body


def _unstorable_text(value: Any, path: str = "") -> str | None:
    """The path of the first key or string the database cannot store, or None.

    JSON allows \\u0000 and lone surrogates; PostgreSQL stores neither, and
    would fail the request with a 500 after validation passed.
    """
    if isinstance(value, str):
        return None if _storable(value) else path or "body"
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if not _storable(key):
                return path or "body"
            found = _unstorable_text(item, where)
            if found is not None:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _unstorable_text(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def _storable(text: str) -> bool:
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _session_for_user(request: HttpRequest, session_id: int) -> TrainingSession:
    session = (
        TrainingSession.objects.for_user(request.user).filter(pk=session_id).first()
        if session_id < MAX_ID
        else None
    )
    if session is None:
        raise ApiError(404, f"No training session {session_id}")
    return session


def _int_arg(
    request: HttpRequest,
    name: str,
    default: int | None,
    minimum: int = 0,
    maximum: int = MAX_ID,
) -> int | None:
    value = request.GET.get(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ApiError(
            400, f"{name} must be an integer", {name: f"{name} must be an integer"}
        ) from None
    if not minimum <= number <= maximum:
        limit = f"between {minimum} and {maximum}"
        raise ApiError(
            400, f"{name} must be {limit}", {name: f"{name} must be {limit}"}
        )
    return number


@api_view(("GET",))
def models(request: HttpRequest) -> JsonResponse:
    sessions = TrainingSession.objects.for_user(request.user)
    described = catalog.describe()
    for model in described["modelTypes"]:
        latest = sessions.filter(model_type=model["key"]).first()
        model["latestSession"] = latest.as_dict() if latest else None
        model["status"] = latest.status if latest else "untrained"
    return JsonResponse(described)


@api_view(("POST",))
def start_training(request: HttpRequest) -> JsonResponse:
    # A CSV data set comes as multipart/form-data; everything else as JSON.
    if request.content_type == "multipart/form-data":
        form = StartTrainingForm(request.POST, request.FILES)
    else:
        form = StartTrainingForm(_json_body(request))
    if not form.is_valid():
        fields = form.field_errors()
        raise ApiError(400, "; ".join(fields.values()), fields)
    session = form.save(owner=request.user)
    return JsonResponse({"session": session.as_dict()}, status=201)


@api_view(("POST",))
def stop_training(request: HttpRequest, session_id: int) -> JsonResponse:
    session = _session_for_user(request, session_id)
    if not session.request_stop():
        raise ApiError(
            409, f"Session {session_id} has already finished ({session.status})"
        )
    events.push_status(session)
    return JsonResponse({"session": session.as_dict()})


@api_view(("GET",))
def training_session(request: HttpRequest, session_id: int) -> JsonResponse:
    return JsonResponse({"session": _session_for_user(request, session_id).as_dict()})


@api_view(("GET",))
def training_metrics(request: HttpRequest, session_id: int) -> JsonResponse:
    """Epochs after a cursor (`after`), or in a zoom range (`from`, `to`), thinned to
    `maxPoints` per series when there are more (long runs)."""
    session = _session_for_user(request, session_id)
    after = _int_arg(request, "after", 0)
    first = _int_arg(request, "from", None)
    last = _int_arg(request, "to", None)
    max_points = _int_arg(request, "maxPoints", None, minimum=2)
    if first is not None and last is not None and first > last:
        message = "from must not be greater than to"
        raise ApiError(400, message, {"from": message})
    first = max(after + 1, first or 0)
    return HttpResponse(
        metrics.chart_json(session, first, last, max_points),
        content_type="application/json",
    )


@api_view(("GET",))
def training_data(request: HttpRequest) -> JsonResponse:
    sessions = TrainingSession.objects.for_user(request.user)
    # Read before the sessions: polling real-time-updates from this cursor then
    # replays anything that changed while this answer was being built.
    cursor = TrainingEvent.objects.head()
    limit = _int_arg(request, "limit", 50, minimum=1, maximum=500)
    offset = _int_arg(request, "offset", 0)
    status = _choice_arg(request, "status", TrainingSession.Status.values)
    if status:
        sessions = sessions.filter(status=status)
    model_type = _choice_arg(
        request, "modelType", [*catalog.MODEL_TYPES, catalog.EXTERNAL_MODEL_TYPE]
    )
    if model_type:
        sessions = sessions.filter(model_type=model_type)
    dataset = _text_arg(request, "dataset", 32)
    if dataset:
        sessions = sessions.filter(dataset=dataset)
    search = _text_arg(request, "q", 200)
    if search:
        sessions = sessions.search(search)
    history = sessions.finished()
    total = history.count()
    return JsonResponse(
        {
            "active": [s.as_dict() for s in sessions.active()],
            "history": [s.as_dict() for s in history[offset : offset + limit]],
            "total": total,
            "limit": limit,
            "offset": offset,
            "hasMore": offset + limit < total,
            "cursor": cursor,
        }
    )


def _choice_arg(request: HttpRequest, name: str, choices: list[str]) -> str | None:
    value = request.GET.get(name)
    if not value:
        return None
    if value not in choices:
        message = f"{name} must be one of {', '.join(choices)}"
        raise ApiError(400, message, {name: message})
    return value


def _text_arg(request: HttpRequest, name: str, max_length: int) -> str | None:
    value = request.GET.get(name, "").strip()
    if len(value) > max_length:
        message = f"{name} must be at most {max_length} characters"
        raise ApiError(400, message, {name: message})
    if "\x00" in value:
        message = f"{name} must not contain NUL characters"
        raise ApiError(400, message, {name: message})
    return value or None


@api_view(("GET",))
def real_time_updates(request: HttpRequest) -> JsonResponse:
    since = _int_arg(request, "since", 0)
    limit = _int_arg(request, "limit", 500, minimum=1, maximum=1000)
    session_id = _int_arg(request, "session", None, minimum=1)
    stored = TrainingEvent.objects.all()
    # Everything up to the head is committed (events.py appends in commit order), so
    # a short page may move the cursor to the head even past other users' events.
    head = stored.head()
    oldest = stored.order_by("id").values_list("id", flat=True).first()
    visible = stored.for_user(request.user).filter(id__gt=since, id__lte=head)
    if session_id is not None:
        visible = visible.filter(session_id=session_id)
    page = list(visible.order_by("id")[:limit])
    has_more = len(page) == limit
    cursor = page[-1].pk if has_more else max(since, head)
    return JsonResponse(
        {
            "events": [event.as_dict() for event in page],
            "cursor": cursor,
            "hasMore": has_more,
            # Events after the cursor may have been pruned: everything up to it is
            # gone. Reload the state from training-data, then follow the stream.
            # (Ids are not contiguous, PostgreSQL's sequences skip, so a new
            # client's cursor of 0 has missed nothing.)
            "missed": oldest is not None and 0 < since < oldest,
        }
    )


# Run logging: a training loop that is not ours reports through these endpoints.

MAX_EPOCHS_PER_REQUEST = 10_000
MAX_METRICS_PER_EPOCH = 200
MAX_METRIC_NAME = 100


def _run_for_owner(request: HttpRequest, session_id: int) -> TrainingSession:
    """An external run of this user; other users' runs do not exist for them."""
    session = (
        TrainingSession.objects.owned(session_id, request.user.pk)
        if session_id < MAX_ID
        else None
    )
    if session is None:
        raise ApiError(404, f"No run {session_id}")
    if session.model_type != catalog.EXTERNAL_MODEL_TYPE:
        raise ApiError(
            409,
            f"Session {session_id} is trained by mltrack, not logged by a script",
        )
    return session


def _require_active(session: TrainingSession) -> None:
    if session.resume_if_lost():
        events.push_status(session)
    if not session.is_active:
        raise ApiError(409, f"Run {session.pk} has already finished ({session.status})")


def _run_response(
    session: TrainingSession, status: int = 200, **extra: Any
) -> JsonResponse:
    return JsonResponse(run_answer(session, session.as_dict(), **extra), status=status)


def run_answer(
    session: TrainingSession, shown: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    """A run endpoint's answer: the run as `shown` (its as_dict()), whether a
    stop was asked, and `extra`."""
    return {
        "session": shown,
        "stopRequested": session.status == TrainingSession.Status.STOPPING,
        **extra,
    }


def _bad(field: str, message: str) -> ApiError:
    return ApiError(400, message, {field: message})


def _optional_text(body: dict, name: str, max_length: int) -> str:
    value = body.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _bad(name, f"{name} must be a string")
    if len(value) > max_length:
        raise _bad(name, f"{name} must be at most {max_length} characters")
    if "\x00" in value:
        raise _bad(name, f"{name} must not contain NUL characters")
    return value.strip()


def _finite(value: Any) -> bool:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float column
        return False


@api_view(("POST",))
def create_run(request: HttpRequest) -> JsonResponse:
    body = _json_body(request)
    name = _optional_text(body, "name", 200)
    dataset = _optional_text(body, "dataset", 32) or "custom"
    params = body.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise _bad("params", "params must be a JSON object")
    bad = _first_non_finite(params)
    if bad:
        raise _bad(f"params.{bad}", f"params.{bad} must be a finite number")
    total = body.get("totalEpochs")
    if isinstance(total, float) and total.is_integer():
        total = int(total)  # 20.0 is the integer 20 in JSON
    if total is not None and (
        not isinstance(total, int)
        or isinstance(total, bool)
        or not 1 <= total <= settings.MLTRACK_MAX_EPOCHS
    ):
        raise _bad(
            "totalEpochs",
            f"totalEpochs must be an integer between 1 and "
            f"{settings.MLTRACK_MAX_EPOCHS}",
        )
    session = TrainingSession.objects.start_external(
        request.user, name, params, total, dataset
    )
    events.push_status(session, "training_started")
    return _run_response(session, status=201)


def _first_non_finite(value: Any, path: str = "") -> str | None:
    """The dotted path of the first NaN or infinity in a JSON value, or None.

    JSON has no NaN; Python's parser accepts it, but the database and browsers do not.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return path or "value"
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else ()
    )
    for key, item in items:
        found = _first_non_finite(item, f"{path}.{key}" if path else str(key))
        if found:
            return found
    return None


def _bad_metrics(where: str, epoch: int, metrics: Any) -> None:
    if not isinstance(metrics, dict) or not metrics:
        raise _bad(
            f"{where}.metrics",
            f"epoch {epoch}: metrics must be a non-empty object of numbers",
        )
    raise _bad(
        f"{where}.metrics",
        f"epoch {epoch}: at most {MAX_METRICS_PER_EPOCH} metrics per epoch",
    )


def _bad_metric(where: str, epoch: int, name: str, value: Any) -> None:
    """Raise the error for this metric, if it has one (an int is fine)."""
    if not name or len(name) > MAX_METRIC_NAME or "\x00" in name:
        raise _bad(
            f"{where}.metrics",
            f"epoch {epoch}: metric names must be 1 to {MAX_METRIC_NAME} characters",
        )
    if not _finite(value):
        raise _bad(
            f"{where}.metrics.{name}",
            f"epoch {epoch}: metric {name} must be a finite number, "
            f"not {json.dumps(value, default=str)[:40]}",
        )


def _clean_epochs(body: dict) -> list[tuple[int, dict[str, Any], float | None]]:
    """The epochs of a metrics batch, or ApiError naming the first bad value."""
    epochs = body.get("epochs")
    if epochs is None:
        raise _bad("epochs", "epochs is required: a list of {epoch, metrics}")
    if not isinstance(epochs, list) or not epochs:
        raise _bad("epochs", "epochs must be a non-empty list of {epoch, metrics}")
    if len(epochs) > MAX_EPOCHS_PER_REQUEST:
        raise ApiError(
            413,
            f"Too many epochs in one request: {len(epochs)}, at most "
            f"{MAX_EPOCHS_PER_REQUEST}; send them in several batches",
            {"epochs": f"at most {MAX_EPOCHS_PER_REQUEST} per request"},
        )
    rows = []
    # The error messages' "epochs[i]" is made only for an error: formatting it
    # for every epoch was a tenth of a 1,000-epoch batch's validation.
    for index, item in enumerate(epochs):
        if not isinstance(item, dict):
            where = f"epochs[{index}]"
            raise _bad(where, f"{where} must be an object {{epoch, metrics}}")
        epoch = item.get("epoch")
        if isinstance(epoch, float) and epoch.is_integer():
            epoch = int(epoch)
        if not isinstance(epoch, int) or isinstance(epoch, bool):
            where = f"epochs[{index}]"
            raise _bad(f"{where}.epoch", f"{where}.epoch must be an integer")
        if not 0 <= epoch <= 2**31 - 1:
            where = f"epochs[{index}]"
            raise _bad(
                f"{where}.epoch", f"{where}.epoch must be between 0 and {2**31 - 1}"
            )
        metrics = item.get("metrics")
        if (
            not isinstance(metrics, dict)
            or not metrics
            or len(metrics) > MAX_METRICS_PER_EPOCH
        ):
            _bad_metrics(f"epochs[{index}]", epoch, metrics)
        for name, value in metrics.items():
            # Most values are plain finite floats: one check for them.
            if type(value) is float and math.isfinite(value):
                if name and len(name) <= MAX_METRIC_NAME and "\x00" not in name:
                    continue
            _bad_metric(f"epochs[{index}]", epoch, name, value)
        duration = item.get("duration")
        if duration is not None and not (_finite(duration) and duration >= 0):
            where = f"epochs[{index}]"
            raise _bad(
                f"{where}.duration",
                f"epoch {epoch}: duration must be a number of seconds >= 0",
            )
        rows.append((epoch, metrics, duration))
    return rows


@api_view(("POST",))
def log_metrics(request: HttpRequest, session_id: int) -> JsonResponse:
    session = _run_for_owner(request, session_id)
    rows = _clean_epochs(_json_body(request))
    _require_active(session)
    with transaction.atomic():
        new = session.record_epochs(rows)
        events.push_epochs(session, new, session.external_stats())
    return _run_response(
        session, received=len(rows), stored=len(new), duplicates=len(rows) - len(new)
    )


@api_view(("POST",))
def finish_run(request: HttpRequest, session_id: int) -> JsonResponse:
    session = _run_for_owner(request, session_id)
    body = _json_body(request)
    status = body.get("status")
    finals = (TrainingSession.Status.COMPLETED, TrainingSession.Status.FAILED)
    if status not in finals:
        raise _bad("status", "status must be completed or failed")
    error = _optional_text(body, "error", 10_000)
    if session.resume_if_lost():
        events.push_status(session)
    if not session.is_active:
        # A retried finish whose first answer was lost: say how it ended.
        if session.status == status or (
            session.status == TrainingSession.Status.STOPPED
            and status == TrainingSession.Status.COMPLETED
        ):
            return _run_response(session)
        _require_active(session)
    if status == TrainingSession.Status.FAILED:
        session.mark_failed(error or "The script reported a failure")
    elif session.status == TrainingSession.Status.STOPPING:
        session.mark_stopped()
    else:
        session.mark_completed({})
    events.push_status(session)
    if session.current_epoch > metrics.CHART_MAX_POINTS:
        tasks.store_chart.delay_on_commit(session.pk)
    return _run_response(session)


@api_view(("POST",))
def heartbeat(request: HttpRequest, session_id: int) -> JsonResponse:
    session = _run_for_owner(request, session_id)
    _require_active(session)
    session.beat()
    session.refresh_from_db()
    return _run_response(session)


@csrf_exempt
def not_found(request: HttpRequest) -> JsonResponse:
    """Any other /api/ path: a JSON 404 rather than an HTML page."""
    return error_response(404, f"No API endpoint at {request.path}")


@api_view(("GET",))
def openapi_document(request: HttpRequest) -> JsonResponse:
    # Behind a login like every other route: nothing is shown to strangers.
    return JsonResponse(openapi.document(), json_dumps_params={"indent": 1})


def docs_page(request: HttpRequest) -> HttpResponse:
    # Under /api/ a stranger gets JSON like everywhere else there, saying where to
    # log in, rather than a redirect a script would follow to a login form.
    if not request.user.is_authenticated:
        return error_response(
            401,
            f"Log in at {reverse(settings.LOGIN_URL)}?next=/api/docs to read the docs",
        )
    document = openapi.document()
    operations = [
        {
            "method": method.upper(),
            "path": path,
            "anchor": f"{method}-{path}".replace("/", "-").strip("-"),
            "summary": spec.get("summary", ""),
            "description": spec.get("description", ""),
            "parameters": spec.get("parameters", []),
            "body": _pretty(spec.get("requestBody", {}).get("content", {})),
            "example": _pretty_example(spec),
            "responses": [
                {"code": code, "description": answer["description"]}
                for code, answer in spec["responses"].items()
            ],
        }
        for path, methods in document["paths"].items()
        for method, spec in methods.items()
    ]
    ctx = {"info": document["info"], "operations": operations}
    return render(request, "api_docs.html", ctx)


def _pretty(content: dict[str, Any]) -> str:
    schema = content.get("application/json", {}).get("schema")
    return json.dumps(schema, indent=2) if schema else ""


def _pretty_example(spec: dict[str, Any]) -> str:
    content = spec.get("requestBody", {}).get("content", {})
    example = content.get("application/json", {}).get("example")
    return json.dumps(example, indent=2) if example else ""
