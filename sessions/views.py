from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from sessions import catalog, events
from sessions.forms import StartTrainingForm
from sessions.models import TrainingSession


def _get_session_for_user(request: HttpRequest, pk: int) -> TrainingSession:
    session = TrainingSession.objects.for_user(request.user).filter(pk=pk).first()
    if session is None:
        raise Http404("No such training session")
    return session


def _focus_session(sessions: Any) -> TrainingSession | None:
    """The session the live chart follows: the newest running one, else the newest."""
    return (
        sessions.filter(status=TrainingSession.Status.RUNNING).first()
        or sessions.first()
    )


@login_required
def models_page(request: HttpRequest) -> HttpResponse:
    tab = "models" if request.GET.get("tab") == "models" else "training"
    sessions = TrainingSession.objects.for_user(request.user)
    focus = _focus_session(sessions)
    ctx = {
        "tab": tab,
        "model_types": catalog.MODEL_TYPES.values(),
        "datasets": catalog.DATASETS.values(),
        "active": sessions.active().select_related("owner"),
        "history": sessions.finished()[:20],
        "focus": focus,
        "page_data": {
            "active": [s.as_dict() for s in sessions.active()],
            "focus": focus.as_dict() if focus else None,
            "focusEpochs": [row.as_dict() for row in focus.epochs.all()]
            if focus
            else [],
        },
    }
    return render(request, "sessions/models_page.html", ctx)


@login_required
@require_POST
def start_training(request: HttpRequest) -> HttpResponse:
    form = StartTrainingForm(request.POST, request.FILES)
    if not form.is_valid():
        for field, message in form.field_errors().items():
            messages.error(request, f"{field}: {message}")
        return redirect(reverse("sessions:models") + "?tab=models")
    session = form.save(owner=request.user)
    events.push_status(session, "training_status")
    label = catalog.MODEL_TYPES[session.model_type].label
    messages.success(
        request, f"Queued {label} on {session.dataset} as session #{session.pk}."
    )
    return redirect(reverse("sessions:models") + "?tab=training")


@login_required
@require_POST
def stop_training(request: HttpRequest, pk: int) -> HttpResponse:
    session = _get_session_for_user(request, pk)
    if session.request_stop():
        events.push_status(session)
    else:
        messages.error(
            request, f"Session #{pk} has already finished ({session.status})."
        )
    return redirect(
        request.POST.get("next") or reverse("sessions:models") + "?tab=training"
    )


@login_required
def session_detail(request: HttpRequest, pk: int) -> HttpResponse:
    session = _get_session_for_user(request, pk)
    ctx = {
        "session": session,
        "page_data": {
            "focus": session.as_dict(),
            "focusEpochs": [row.as_dict() for row in session.epochs.all()],
        },
    }
    return render(request, "sessions/session_detail.html", ctx)
