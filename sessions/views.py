from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import Q
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    QueryDict,
    StreamingHttpResponse,
)
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_POST

from sessions import catalog, events, metrics
from sessions.forms import StartTrainingForm
from sessions.models import TrainingSession

HISTORY_PAGE_SIZE = 20
COMPARE_MAX_SESSIONS = 8
# The session page's charts; session_detail.js knows which metrics each one draws.
DETAIL_CHARTS = (
    {"key": "loss", "title": "Loss: train vs validation"},
    {"key": "accuracy", "title": "Accuracy: train vs validation"},
    {"key": "learning_rate", "title": "Learning rate"},
    {"key": "scores", "title": "Precision, recall, F1 (validation)"},
)
COMPARE_CHARTS = (
    {"metric": "val_loss", "title": "Validation loss"},
    {"metric": "val_accuracy", "title": "Validation accuracy"},
    {"metric": "train_loss", "title": "Training loss"},
    {"metric": "train_accuracy", "title": "Training accuracy"},
)

_JSON_SCRIPT_ESCAPES = {ord(">"): "\\u003E", ord("<"): "\\u003C", ord("&"): "\\u0026"}


class HistoryFilterForm(forms.Form):
    """The history table's filters. Bad values are ignored, never an error page."""

    status = forms.ChoiceField(
        choices=[("", "any status"), *TrainingSession.Status.choices], required=False
    )
    model = forms.ChoiceField(
        choices=[
            ("", "any model"),
            *((k, c.label) for k, c in catalog.MODEL_TYPES.items()),
        ],
        required=False,
    )
    dataset = forms.ChoiceField(
        choices=[
            ("", "any data set"),
            *((k, c.label) for k, c in catalog.DATASETS.items()),
        ],
        required=False,
    )
    q = forms.CharField(required=False, max_length=100, strip=True)

    def filter(self, sessions: Any) -> Any:
        data = self.cleaned_data if self.is_valid() else {}
        if data.get("status"):
            sessions = sessions.filter(status=data["status"])
        if data.get("model"):
            sessions = sessions.filter(model_type=data["model"])
        if data.get("dataset"):
            sessions = sessions.filter(dataset=data["dataset"])
        if data.get("q"):
            text = data["q"].lstrip("#")
            match = (
                Q(name__icontains=text)
                | Q(model_type__icontains=text)
                | Q(dataset__icontains=text)
            )
            if text.isdigit():
                match |= Q(pk=int(text))
            sessions = sessions.filter(match)
        return sessions


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


def _params_from_post(post: QueryDict, model_type: str, dataset: str) -> dict:
    """The custom-run form's parameters as the API's `params` object.

    Inputs are named "param.<scope>.<name>", the scope being the model type, the
    data set or "common": model types share names (learning_rate, max_depth), so
    only the chosen model's and data set's inputs count.
    """
    params = {}
    for scope in (model_type, dataset, "common"):
        prefix = f"param.{scope}."
        for key in post:
            if key.startswith(prefix):
                params[key[len(prefix) :]] = post[key].strip()
    return params


def _start_form_data(post: QueryDict) -> QueryDict:
    data = post.copy()
    if "params" not in data:
        model_type, dataset = data.get("modelType", ""), data.get("dataset", "")
        data["params"] = json.dumps(_params_from_post(post, model_type, dataset))
    return data


def _param_fields(
    post: QueryDict | None, errors: dict[str, str]
) -> tuple[list[dict[str, Any]], list[str]]:
    """Fieldsets of the custom-run form (one per model type, per data set with
    parameters, and the common ones) with the value last sent or the default, and
    each error next to its field; errors no field shows come back on their own."""
    chosen = ("common",)
    if post is not None:
        chosen = (post.get("modelType"), post.get("dataset"), "common")
    unplaced = {k: v for k, v in errors.items() if k.startswith("params")}
    fieldsets = []
    scopes = [
        *(("model", c) for c in catalog.MODEL_TYPES.values()),
        *(("dataset", c) for c in catalog.DATASETS.values() if c.params),
        ("common", catalog.Choice("common", "Every run", "", catalog.COMMON_PARAMS)),
    ]
    for kind, choice in scopes:
        fields = []
        for param in choice.params:
            name = f"param.{choice.key}.{param.name}"
            default = param.default
            if isinstance(default, list):
                default = ",".join(str(v) for v in default)
            elif isinstance(default, bool):
                default = "true" if default else "false"
            value = post.get(name) if post is not None and name in post else default
            error = ""
            if choice.key in chosen:
                error = unplaced.pop(f"params.{param.name}", "")
            fields.append(
                {
                    "param": param,
                    "name": name,
                    "id": name.replace(".", "-"),
                    "value": "" if value is None else value,
                    "error": error,
                }
            )
        fieldsets.append({"kind": kind, "choice": choice, "fields": fields})
    return fieldsets, list(unplaced.values())


def _models_page_context(
    request: HttpRequest, tab: str, start_form: StartTrainingForm | None = None
) -> dict[str, Any]:
    sessions = TrainingSession.objects.for_user(request.user)
    focus = _focus_session(sessions)
    history_filter = HistoryFilterForm(request.GET)
    history = Paginator(history_filter.filter(sessions), HISTORY_PAGE_SIZE).get_page(
        request.GET.get("page")
    )
    query = request.GET.copy()
    query.pop("page", None)
    posted = start_form.data if start_form is not None else None
    errors = start_form.field_errors() if start_form is not None else {}
    fieldsets, params_errors = _param_fields(posted, errors)
    chart = {"epochs": [], "downsampled": False}
    if focus and tab == "training":  # the Models tab draws no chart
        chart = metrics.chart_rows(
            focus.epochs.all(), max_points=metrics.CHART_MAX_POINTS
        )
    return {
        "tab": tab,
        "model_types": catalog.MODEL_TYPES.values(),
        "datasets": catalog.DATASETS.values(),
        "common_params": catalog.COMMON_PARAMS,
        "param_fieldsets": fieldsets,
        "params_errors": params_errors,
        "posted": posted or {},
        "errors": errors,
        "form_error": errors.get("__all__", ""),
        "max_epochs": StartTrainingForm.base_fields["epochs"].max_value,
        "default_epochs": catalog.DEFAULT_EPOCHS,
        "active": sessions.active(),
        "history": history,
        "history_filter": history_filter,
        "history_query": query.urlencode(),
        "filtered": any(
            request.GET.get(k) for k in ("status", "model", "dataset", "q")
        ),
        "focus": focus,
        "page_data": {
            "active": [s.as_dict() for s in sessions.active()],
            "focus": focus.as_dict() if focus else None,
            "focusEpochs": chart["epochs"],
            "downsampled": chart["downsampled"],
            "historyLive": history.number == 1,
        },
    }


@login_required
def models_page(request: HttpRequest) -> HttpResponse:
    tab = "models" if request.GET.get("tab") == "models" else "training"
    ctx = _models_page_context(request, tab)
    return render(request, "sessions/models_page.html", ctx)


@login_required
@require_POST
def start_training(request: HttpRequest) -> HttpResponse:
    form = StartTrainingForm(_start_form_data(request.POST), request.FILES)
    if not form.is_valid():
        # Show the form again with each message next to its field.
        ctx = _models_page_context(request, "models", start_form=form)
        return render(request, "sessions/models_page.html", ctx, status=400)
    session = form.save(owner=request.user)
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
    next_url = request.POST.get("next", "")
    if not next_url.startswith("/") or next_url.startswith("//"):
        next_url = reverse("sessions:models") + "?tab=training"
    return redirect(next_url)


@login_required
def session_detail(request: HttpRequest, pk: int) -> HttpResponse:
    session = _get_session_for_user(request, pk)
    # The chart API's answer, as text: a finished run's is cached (chart_json),
    # where reading and thinning a 100,000-epoch run took ~0.4 s of every visit.
    chart = metrics.chart_json(session, max_points=metrics.CHART_MAX_POINTS)
    importances = list((session.report.get("featureImportances") or {}).items())[:20]
    top = max((value for _, value in importances), default=0) or 1
    ctx = {
        "session": session,
        "report": session.report,
        "confusion": _confusion_rows(session.report),
        "per_class": [
            (
                label,
                s.get("precision"),
                s.get("recall"),
                s.get("f1-score"),
                s.get("support"),
            )
            for label, s in (session.report.get("perClass") or {}).items()
        ],
        "charts": DETAIL_CHARTS,
        "max_points": metrics.CHART_MAX_POINTS,
        "importances": [
            (name, value, 100 * value / top) for name, value in importances
        ],
        "page_data": {"focus": session.as_dict()},
        # Escaped as the json_script filter escapes, so it cannot end its
        # <script> element: "<", ">" and "&" only occur inside JSON strings.
        "chart_data": mark_safe(chart.translate(_JSON_SCRIPT_ESCAPES)),
    }
    return render(request, "sessions/session_detail.html", ctx)


def _confusion_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of the confusion matrix with each cell's share of its row, for shading."""
    rows = []
    for label, counts in zip(
        report.get("classes") or [], report.get("confusionMatrix") or [], strict=False
    ):
        total = sum(counts) or 1
        rows.append(
            {
                "label": label,
                "cells": [(count, round(100 * count / total)) for count in counts],
            }
        )
    return rows


@login_required
def session_metrics_csv(request: HttpRequest, pk: int) -> StreamingHttpResponse:
    session = _get_session_for_user(request, pk)
    response = StreamingHttpResponse(
        metrics.csv_lines(session), content_type="text/csv; charset=utf-8"
    )
    response["Content-Disposition"] = (
        f'attachment; filename="session-{session.pk}-metrics.csv"'
    )
    return response


@login_required
def session_metrics_json(request: HttpRequest, pk: int) -> StreamingHttpResponse:
    session = _get_session_for_user(request, pk)
    response = StreamingHttpResponse(
        metrics.json_chunks(session), content_type="application/json"
    )
    response["Content-Disposition"] = (
        f'attachment; filename="session-{session.pk}-metrics.json"'
    )
    return response


def _compare_ids(request: HttpRequest) -> tuple[list[int], str]:
    """The session ids to compare from ?ids=1&ids=2 or ?ids=1,2, and an error."""
    ids: list[int] = []
    for value in request.GET.getlist("ids"):
        for part in value.replace(" ", ",").split(","):
            if not part:
                continue
            if not part.lstrip("#").isdigit():
                return [], f"{part!r} is not a session number."
            if int(part.lstrip("#")) not in ids:
                ids.append(int(part.lstrip("#")))
    if len(ids) > COMPARE_MAX_SESSIONS:
        return [], f"Compare at most {COMPARE_MAX_SESSIONS} sessions at once."
    return ids, ""


def _param_table(sessions: list[TrainingSession]) -> list[dict[str, Any]]:
    """One row per setting, a value per session, and whether the values differ."""
    settings_by_session = [
        {
            "model": s.model_type,
            "data set": s.dataset,
            "epochs": s.total_epochs,
            **{f"params.{k}": v for k, v in sorted(s.params.items())},
        }
        for s in sessions
    ]
    names = list(dict.fromkeys(n for d in settings_by_session for n in d))
    rows = []
    for name in names:
        values = [d.get(name, "–") for d in settings_by_session]
        differs = len({json.dumps(v, sort_keys=True) for v in values}) > 1
        rows.append({"name": name, "values": values, "differs": differs})
    return rows


@login_required
def compare(request: HttpRequest) -> HttpResponse:
    ids, error = _compare_ids(request)
    visible = TrainingSession.objects.for_user(request.user)
    found = {s.pk: s for s in visible.filter(pk__in=ids)}
    missing = [pk for pk in ids if pk not in found]
    if missing:
        error = "No session " + ", ".join(f"#{pk}" for pk in missing) + "."
    chosen = [found[pk] for pk in ids if pk in found]
    ctx = {
        "sessions": chosen,
        "error": error,
        "recent": visible[:50],
        "chosen_ids": [s.pk for s in chosen],
        "param_rows": _param_table(chosen),
        "compare_charts": COMPARE_CHARTS,
        "page_data": {
            "sessions": [
                {
                    "session": s.as_dict(),
                    "epochs": metrics.chart_rows(
                        s.epochs.all(), max_points=metrics.CHART_MAX_POINTS
                    )["epochs"],
                }
                for s in chosen
            ]
        },
    }
    return render(request, "sessions/compare.html", ctx, status=400 if error else 200)
