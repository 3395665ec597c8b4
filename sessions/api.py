"""The JSON API under /api/ml/ (paths from the seed).

Every endpoint answers JSON, errors included: {"error": ..., "fields": {...}} with
400 (bad input), 401 (no credentials), 403 (CSRF), 404 (unknown or not yours),
405, 409 (not possible in the session's state) and 413 (body too large).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.views.decorators.csrf import csrf_exempt

from sessions import catalog, events, metrics
from sessions.auth import bearer_token, user_for_token
from sessions.forms import StartTrainingForm
from sessions.models import EpochMetric, TrainingSession


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
            try:
                return view(request, *args, **kwargs)
            except ApiError as exc:
                return error_response(exc.status, exc.error, exc.fields)
            except RequestDataTooBig:
                return error_response(413, "Request body too large")

        return wrapper

    return decorator


def _json_body(request: HttpRequest) -> dict[str, Any]:
    if not request.body:
        return {}
    try:
        body = json.loads(request.body)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "The request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object")
    return body


def _session_for_user(request: HttpRequest, session_id: int) -> TrainingSession:
    session = (
        TrainingSession.objects.for_user(request.user).filter(pk=session_id).first()
    )
    if session is None:
        raise ApiError(404, f"No training session {session_id}")
    return session


def _int_arg(
    request: HttpRequest,
    name: str,
    default: int | None,
    minimum: int = 0,
    maximum: int | None = None,
) -> int | None:
    value = request.GET.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise ApiError(
            400, f"{name} must be an integer", {name: f"{name} must be an integer"}
        ) from None
    if number < minimum or (maximum is not None and number > maximum):
        limit = f"between {minimum} and {maximum}" if maximum else f"at least {minimum}"
        raise ApiError(
            400, f"{name} must be {limit}", {name: f"{name} must be {limit}"}
        )
    return number


@api_view(("GET",))
def models(request: HttpRequest) -> JsonResponse:
    latest = {}
    for session in TrainingSession.objects.for_user(request.user).order_by("-created")[
        :200
    ]:
        latest.setdefault(session.model_type, session.as_dict())
    described = catalog.describe()
    for model in described["modelTypes"]:
        model["latestSession"] = latest.get(model["key"])
        model["status"] = (
            latest[model["key"]]["status"] if model["key"] in latest else "untrained"
        )
    return JsonResponse(described)


@api_view(("POST",))
def start_training(request: HttpRequest) -> JsonResponse:
    form = StartTrainingForm(_json_body(request))
    if not form.is_valid():
        fields = form.field_errors()
        raise ApiError(400, "; ".join(fields.values()), fields)
    session = form.save(owner=request.user)
    events.push_status(session, "training_status")
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
    max_points = _int_arg(request, "maxPoints", None, minimum=10, maximum=100_000)
    if first is not None and last is not None and first > last:
        message = "from must not be greater than to"
        raise ApiError(400, message, {"from": message})
    first = max(after + 1, first or 0)
    rows = EpochMetric.objects.filter(session=session)
    chart = metrics.chart_rows(rows, first, last, max_points)
    return JsonResponse(
        {
            "sessionId": session.pk,
            "status": session.status,
            "epochs": chart["epochs"],
            "count": chart["count"],
            "downsampled": chart["downsampled"],
            "maxPoints": max_points,
        }
    )


@api_view(("GET",))
def training_data(request: HttpRequest) -> JsonResponse:
    sessions = TrainingSession.objects.for_user(request.user)
    limit = _int_arg(request, "limit", 50, minimum=1, maximum=500)
    offset = _int_arg(request, "offset", 0)
    status = request.GET.get("status")
    if status:
        if status not in TrainingSession.Status.values:
            message = (
                f"status must be one of {', '.join(TrainingSession.Status.values)}"
            )
            raise ApiError(400, message, {"status": message})
        sessions = sessions.filter(status=status)
    history = sessions.finished()
    return JsonResponse(
        {
            "active": [s.as_dict() for s in sessions.active()],
            "history": [s.as_dict() for s in history[offset : offset + limit]],
            "total": history.count(),
            "limit": limit,
            "offset": offset,
        }
    )
